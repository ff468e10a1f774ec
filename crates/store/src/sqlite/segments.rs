//! Segment definitions.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, params};

use super::{SqliteStore, paged, remember, remembered};
use crate::*;

fn from_row(row: &Row<'_>) -> rusqlite::Result<Segment> {
    Ok(Segment {
        tenant: row.get("tenant")?,
        id: row.get("id")?,
        display_name: row.get("display_name")?,
        rule: row.get("rule")?,
        create_time: row.get("create_time")?,
    })
}

#[async_trait]
impl SegmentStore for SqliteStore {
    async fn create_segment(&self, segment: Segment, request_id: Option<String>) -> Result<Segment> {
        self.tx(move |tx| {
            if let Some(id) = remembered(tx, &segment.tenant, &request_id, "segment")? {
                return tx
                    .query_row(
                        "SELECT * FROM segments WHERE tenant = ?1 AND id = ?2",
                        params![segment.tenant, id],
                        from_row,
                    )
                    .optional()?
                    .ok_or_else(|| StoreError::NotFound(format!("segments/{id}")));
            }
            tx.execute(
                "INSERT INTO segments (tenant, id, display_name, rule, create_time) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![segment.tenant, segment.id, segment.display_name, segment.rule, segment.create_time],
            )?;
            remember(tx, &segment.tenant, &request_id, "segment", &segment.id)?;
            Ok(segment)
        })
        .await
    }

    async fn get_segment(&self, tenant: &str, segment_id: &str) -> Result<Option<Segment>> {
        let (tenant, id) = (tenant.to_owned(), segment_id.to_owned());
        self.tx(move |tx| {
            Ok(tx
                .query_row("SELECT * FROM segments WHERE tenant = ?1 AND id = ?2", params![tenant, id], from_row)
                .optional()?)
        })
        .await
    }

    async fn list_segments(&self, tenant: &str, page: PageRequest) -> Result<Page<Segment>> {
        let tenant = tenant.to_owned();
        self.tx(move |tx| {
            paged(
                tx,
                "SELECT * FROM segments WHERE tenant = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                &tenant,
                None,
                &page,
                from_row,
                |s| &s.id,
            )
        })
        .await
    }

    async fn delete_segment(&self, tenant: &str, segment_id: &str) -> Result<bool> {
        let (tenant, id) = (tenant.to_owned(), segment_id.to_owned());
        self.tx(
            move |tx| Ok(tx.execute("DELETE FROM segments WHERE tenant = ?1 AND id = ?2", params![tenant, id])? > 0),
        )
        .await
    }
}
