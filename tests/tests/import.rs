//! `ImportSubscribers`: typed columns, per-line errors, whole-file errors
//! that write nothing, modes, dry runs, and resuming under a request id.

use std::time::Duration;

use broadside_proto::v1::*;
use broadside_tests::{Sandbox, test_config};
use tonic::Code;

fn chunks(list: &str, data: &[u8], options: ImportSubscribersRequest) -> Vec<ImportSubscribersRequest> {
    let mut messages = vec![ImportSubscribersRequest { parent: list.into(), ..options }];
    for chunk in data.chunks(64 * 1024) {
        messages.push(ImportSubscribersRequest { chunk: chunk.to_vec(), ..Default::default() });
    }
    messages
}

async fn import(
    sandbox: &mut Sandbox,
    list: &str,
    data: &[u8],
    options: ImportSubscribersRequest,
) -> Result<ImportSubscribersResponse, tonic::Status> {
    let stream = tokio_stream::iter(chunks(list, data, options));
    sandbox.subscribers.import_subscribers(stream).await.map(|r| r.into_inner())
}

async fn members(sandbox: &mut Sandbox, list: &str) -> Vec<Subscriber> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let request = ListSubscribersRequest { parent: list.into(), page_size: 1000, page_token: token };
        let page = sandbox.subscribers.list_subscribers(request).await.unwrap().into_inner();
        all.extend(page.subscribers);
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_rows_commit_and_each_bad_row_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let list = sandbox.create_list("Imported").await.unwrap();
    let mut csv = Vec::new();
    csv.extend_from_slice("\u{feff}email,name,age:number,vip:bool,tags:list,signup:timestamp,city\n".as_bytes()); // 1
    csv.extend_from_slice(b"ada@example.com,Ada,36,yes,a|b,2026-01-02T03:04:05Z,Paris\n"); // 2
    csv.extend_from_slice(b"not-an-address,Bob,1,no,,,\n"); // 3
    csv.extend_from_slice(b"carl@example.com,Carl,old,no,,,\n"); // 4
    csv.extend_from_slice(b"ADA@EXAMPLE.COM,Ada again,1,no,,,\n"); // 5
    csv.extend_from_slice(b"\n"); // 6: blank
    csv.extend_from_slice(
        "dora@Bücher.example,\"Dora, \"\"the\"\" Explorer\",7,true,,,\"Line one\nline two\"\n".as_bytes(),
    ); // 7-8
    csv.extend_from_slice(b"eve@example.com,Eve,1,no,,,x,extra\n"); // 9
    csv.extend_from_slice(format!("fay@example.com,Fay,1,no,,,{}\n", "y".repeat(10 * 1024 * 1024)).as_bytes()); // 10
    csv.extend_from_slice(b"gus@example.com,G\xe9rard,1,no,,,\n"); // 11: Latin-1, not UTF-8
    csv.extend_from_slice(b"hal@example.com,Hal,,,,,\n"); // 12
    let response = import(&mut sandbox, &list, &csv, ImportSubscribersRequest::default()).await.unwrap();
    assert_eq!((response.imported, response.updated, response.rejected), (3, 0, 6), "{response:#?}");
    let errors = response.errors.join("\n");
    for expected in [
        "line 3: email:",
        "line 4: age: \"old\" is not a number",
        "line 5: email: \"ADA@example.com\" already appears on line 2",
        "line 9: has 8 fields, the header has 7",
        "line 10: row is",
        "line 11: not valid UTF-8",
    ] {
        assert!(errors.contains(expected), "missing {expected:?} in:\n{errors}");
    }
    let stored = members(&mut sandbox, &list).await;
    let mut emails: Vec<&str> = stored.iter().map(|s| s.email.as_str()).collect();
    emails.sort();
    assert_eq!(emails, vec!["ada@example.com", "dora@xn--bcher-kva.example", "hal@example.com"]);
    let ada = stored.iter().find(|s| s.email == "ada@example.com").unwrap();
    let attributes = broadside_proto::convert::struct_to_json(ada.attributes.as_ref().unwrap());
    assert_eq!(
        serde_json::Value::Object(attributes),
        serde_json::json!({"age": 36, "vip": true, "tags": ["a", "b"], "signup": "2026-01-02T03:04:05Z", "city": "Paris"})
    );
    let dora = stored.iter().find(|s| s.email.starts_with("dora")).unwrap();
    assert_eq!(dora.display_name, "Dora, \"the\" Explorer");
    let consent = sandbox
        .subscribers
        .list_consent_records(ListConsentRecordsRequest { parent: ada.name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(consent.records[0].context.as_ref().unwrap().source, "import");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_refused_whole_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let list = sandbox.create_list("Imported").await.unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"name,city\nAda,Paris\n".to_vec(), "no `email` column; the columns are: name, city"),
        (b"\xff\xfee\x00m\x00a\x00i\x00l\x00\n\x00".to_vec(), "UTF-16"),
        (b"email,age:int\na@example.com,1\n".to_vec(), "unknown type \"int\""),
        (b"email,Email\na@example.com,b@example.com\n".to_vec(), "appears twice"),
        (b"email,bad key\na@example.com,1\n".to_vec(), "attribute names"),
        (Vec::new(), "the file is empty"),
    ];
    for (data, expected) in cases {
        let status = import(&mut sandbox, &list, &data, ImportSubscribersRequest::default()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{expected:?} not in {:?}", status.message());
    }
    // A line longer than the stream limit stops the import; earlier batches stay, nothing is corrupted.
    let mut huge = b"email,city\nok@example.com,x\n".to_vec();
    huge.extend(std::iter::repeat_n(b'z', broadside_subscribers::MAX_LINE_BYTES + 10));
    let status = import(&mut sandbox, &list, &huge, ImportSubscribersRequest::default()).await.unwrap_err();
    assert!(status.message().contains("longer than 16 MiB"), "{status:?}");
    let missing = import(&mut sandbox, "lists/nope", b"email\n", ImportSubscribersRequest::default()).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
    assert!(members(&mut sandbox, &list).await.len() <= 1, "at most the rows before the runaway line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_dry_run_and_idempotent_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let list = sandbox.create_list("Imported").await.unwrap();
    sandbox.add_subscriber(&list, "row1@example.com", "Kept", serde_json::json!({"plan": "gold"})).await.unwrap();
    let rows = 50_000; // imports commit every 20,000 rows
    let mut csv = b"email,name,n:number\n".to_vec();
    for i in 0..rows {
        csv.extend_from_slice(format!("row{i}@example.com,Row {i},{i}\n").as_bytes());
    }

    let dry = ImportSubscribersRequest { dry_run: true, ..Default::default() };
    let dry = import(&mut sandbox, &list, &csv, dry).await.unwrap();
    assert_eq!((dry.imported, dry.updated, dry.lines, dry.dry_run), (rows - 1, 1, rows, true));
    assert_eq!(members(&mut sandbox, &list).await.len(), 1, "a dry run writes nothing");

    let skip = ImportSubscribersRequest { mode: ImportMode::SkipExisting as i32, ..Default::default() };
    let small = b"email,name\nrow1@example.com,Overwritten?\n";
    let skipped = import(&mut sandbox, &list, small, skip).await.unwrap();
    assert_eq!((skipped.imported, skipped.skipped), (0, 1));
    let kept = members(&mut sandbox, &list).await;
    assert_eq!(kept[0].display_name, "Kept");

    // A client that dies mid-upload: the stream stalls after part of the file, then is dropped.
    let request_id = "import-resume-test".to_string();
    let cut = csv.len() * 3 / 4;
    let mut first_part =
        chunks(&list, &csv[..cut], ImportSubscribersRequest { request_id: request_id.clone(), ..Default::default() });
    let head = first_part.remove(0);
    let stalled =
        tokio_stream::StreamExt::chain(tokio_stream::iter(std::iter::once(head).chain(first_part)), futures_pending());
    let mut client = sandbox.subscribers.clone();
    let upload = tokio::spawn(async move { client.import_subscribers(stalled).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while members(&mut sandbox, &list).await.len() < 20_000 {
        assert!(std::time::Instant::now() < deadline, "the first batches never committed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    upload.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let partial = members(&mut sandbox, &list).await.len();
    assert!(partial < rows as usize, "the cut-off upload must not have finished ({partial})");

    let options = ImportSubscribersRequest { request_id: request_id.clone(), ..Default::default() };
    let resumed = import(&mut sandbox, &list, &csv, options.clone()).await.unwrap();
    assert!(resumed.resumed_lines >= 20_000, "{resumed:#?}");
    assert_eq!(resumed.rejected, 0);
    let all = members(&mut sandbox, &list).await;
    assert_eq!(all.len(), rows as usize, "every row once, no duplicates");
    assert_eq!(resumed.imported + resumed.updated, rows, "counts span both runs: {resumed:#?}");
    // Running the finished import again changes nothing and answers from the record.
    let again = import(&mut sandbox, &list, &csv, options).await.unwrap();
    assert_eq!((again.lines, again.imported), (0, resumed.imported));
    assert_eq!(members(&mut sandbox, &list).await.len(), rows as usize);
}

/// A stream that never yields: the upload stalls as if the client hung.
fn futures_pending() -> impl tokio_stream::Stream<Item = ImportSubscribersRequest> {
    tokio_stream::pending()
}
