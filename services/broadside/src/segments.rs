//! `broadside segments`: create, preview and list segments. Rules are parsed
//! here first, so a mistake is shown with a caret under the bad token before
//! anything is sent.

use anyhow::bail;
use broadside_proto::v1::segment_service_client::SegmentServiceClient;
use broadside_proto::v1::*;
use clap::Subcommand;

use crate::connect::{ClientArgs, connect, plain};

#[derive(Debug, Subcommand)]
pub enum SegmentsCommand {
    /// Create a segment; prints its resource name and canonical rule.
    Create {
        display_name: String,
        /// The rule, e.g. 'attributes.country = "DE" and opened(within: 30d)'.
        #[arg(long)]
        rule: String,
    },
    /// Count the members of a segment (`segments/ID`) or of an ad-hoc --rule, with a sample.
    Preview {
        /// `segments/ID`; or give --rule.
        name: Option<String>,
        #[arg(long)]
        rule: Option<String>,
        /// Only members of this list (`lists/ID`).
        #[arg(long, default_value = "")]
        list: String,
        /// Sample size.
        #[arg(long, default_value_t = 10)]
        sample: i32,
    },
    /// Show every segment.
    List,
}

/// Parses `rule` locally; on error, prints it with a caret and fails.
fn check(rule: &str) -> anyhow::Result<()> {
    if let Err(error) = broadside_segmentation::rule::parse(rule) {
        bail!("invalid rule: {error}\n{}", error.caret(rule));
    }
    Ok(())
}

pub async fn run(args: &ClientArgs, command: SegmentsCommand) -> anyhow::Result<()> {
    if let SegmentsCommand::Create { rule, .. } | SegmentsCommand::Preview { rule: Some(rule), .. } = &command {
        check(rule)?;
    }
    let mut client = SegmentServiceClient::new(connect(args).await?);
    match command {
        SegmentsCommand::Create { display_name, rule } => {
            let segment = Segment { display_name, rule, ..Default::default() };
            let created = client
                .create_segment(CreateSegmentRequest { segment: Some(segment), request_id: String::new() })
                .await
                .map_err(plain)?
                .into_inner();
            crate::outln!("{}\t{}\t{}", created.name, created.display_name, created.rule);
        }
        SegmentsCommand::Preview { name, rule, list, sample } => {
            let (name, rule) = match (name, rule) {
                (Some(name), None) => (name, String::new()),
                (None, Some(rule)) => (String::new(), rule),
                _ => bail!("give a segment name or --rule, not both"),
            };
            let request = PreviewSegmentRequest { name, rule, list, page_size: sample, ..Default::default() };
            let preview = client.preview_segment(request).await.map_err(plain)?.into_inner();
            crate::outln!(
                "members={} evaluate_ms={:.2} position={}",
                preview.total,
                preview.evaluate_ms,
                preview.position
            );
            crate::outln!("rule: {}", preview.rule);
            for subscriber in preview.subscribers {
                crate::outln!("{subscriber}");
            }
        }
        SegmentsCommand::List => {
            let mut token = String::new();
            loop {
                let page = client
                    .list_segments(ListSegmentsRequest { page_size: 1000, page_token: token })
                    .await
                    .map_err(plain)?
                    .into_inner();
                for segment in page.segments {
                    crate::outln!("{}\t{}\t{}", segment.name, segment.display_name, segment.rule);
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
    }
    Ok(())
}
