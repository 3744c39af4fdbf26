use protocol::api::DatasetItem;
use sea_orm::{ConnectionTrait, DbErr, FromQueryResult, Value};

use super::{Id, all, exec, one, placeholders, values};

#[derive(Debug, Clone, FromQueryResult)]
pub struct VersionRow {
    pub id: i64,
    pub dataset: String,
    pub version: String,
    pub number: i64,
    pub root: String,
    pub split: String,
    pub seed: i64,
    pub group_by: String,
    pub classes_json: String,
    pub report_json: String,
    pub item_count: i64,
    pub created_at: i64,
    pub created_by: String,
    pub pseudonym_key: Option<String>,
    /// 0 while its items are being inserted (in bounded transactions), 1 once whole.
    pub ready: i64,
}

const VERSION_COLUMNS: &str = "v.id, d.name AS dataset, v.version, v.number, v.root, v.split, v.seed, \
    v.group_by, v.classes_json, v.report_json, v.item_count, v.created_at, v.created_by, v.pseudonym_key, v.ready \
    FROM dataset_versions v JOIN datasets d ON d.id = v.dataset_id";

#[derive(Debug, FromQueryResult)]
pub struct SplitCountRow {
    pub label: String,
    pub split: String,
    pub n: i64,
}

#[derive(Debug, FromQueryResult)]
pub struct ItemRow {
    pub path: String,
    pub sha256: String,
    pub bytes: i64,
    pub label: String,
    pub patient: Option<String>,
    pub split: String,
    pub view: Option<String>,
    pub acquired_at: Option<String>,
}

impl ItemRow {
    pub fn into_item(self) -> Result<DatasetItem, DbErr> {
        let split = super::decode_enum(&format!("dataset_items row `{}`", self.path), "split", &self.split)?;
        Ok(DatasetItem {
            path: self.path,
            sha256: self.sha256,
            bytes: self.bytes as u64,
            label: self.label,
            patient: self.patient,
            split,
            view: self.view,
            acquired_at: self.acquired_at,
        })
    }
}

impl VersionRow {
    pub fn classes(&self) -> Result<Vec<String>, DbErr> {
        super::decode_json(&format!("dataset_versions row {}", self.id), "classes_json", &self.classes_json)
    }

    pub fn report(&self) -> Result<Vec<protocol::api::IngestionIssue>, DbErr> {
        super::decode_json(&format!("dataset_versions row {}", self.id), "report_json", &self.report_json)
    }
}

pub async fn dataset_id(conn: &impl ConnectionTrait, name: &str) -> Result<Option<i64>, DbErr> {
    Ok(one::<Id>(conn, "SELECT id FROM datasets WHERE name = $1", values![name]).await?.map(|r| r.id))
}

pub async fn create_dataset(conn: &impl ConnectionTrait, name: &str, now: i64) -> Result<i64, DbErr> {
    exec(conn, "INSERT INTO datasets (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", values![name, now]).await?;
    dataset_id(conn, name).await?.ok_or_else(|| DbErr::RecordNotFound(format!("dataset {name}")))
}

pub async fn version_by_hash(conn: &impl ConnectionTrait, version: &str) -> Result<Option<VersionRow>, DbErr> {
    one(conn, &format!("SELECT {VERSION_COLUMNS} WHERE v.version = $1"), values![version]).await
}

pub async fn version_by_id(conn: &impl ConnectionTrait, id: i64) -> Result<Option<VersionRow>, DbErr> {
    one(conn, &format!("SELECT {VERSION_COLUMNS} WHERE v.id = $1"), values![id]).await
}

/// Whole versions of a dataset whose hash starts with `prefix` (all of them for ""), newest
/// first. A version still being registered is not among them.
pub async fn versions(conn: &impl ConnectionTrait, dataset: &str, prefix: &str) -> Result<Vec<VersionRow>, DbErr> {
    all(
        conn,
        &format!("SELECT {VERSION_COLUMNS} WHERE d.name = $1 AND v.version LIKE $2 AND v.ready = 1 ORDER BY v.number DESC"),
        values![dataset, format!("{prefix}%")],
    )
    .await
}

pub async fn dataset_names(conn: &impl ConnectionTrait) -> Result<Vec<String>, DbErr> {
    #[derive(FromQueryResult)]
    struct Name {
        name: String,
    }
    Ok(all::<Name>(conn, "SELECT name FROM datasets ORDER BY name", vec![]).await?.into_iter().map(|n| n.name).collect())
}

pub async fn next_number(conn: &impl ConnectionTrait, dataset_id: i64) -> Result<i64, DbErr> {
    #[derive(FromQueryResult)]
    struct Max {
        n: Option<i64>,
    }
    let max = one::<Max>(conn, "SELECT MAX(number) AS n FROM dataset_versions WHERE dataset_id = $1", values![dataset_id]).await?;
    Ok(max.and_then(|m| m.n).unwrap_or(0) + 1)
}

pub struct NewVersion<'a> {
    pub dataset_id: i64,
    pub version: &'a str,
    pub number: i64,
    pub root: &'a str,
    pub split: &'a str,
    pub seed: i64,
    pub group_by: &'a str,
    pub classes_json: &'a str,
    pub report_json: &'a str,
    pub item_count: i64,
    pub created_at: i64,
    pub created_by: &'a str,
    pub pseudonym_key: Option<&'a str>,
}

/// Inserts a version that is not ready yet: [`mark_ready`] makes it visible once its items are in.
pub async fn insert_version(conn: &impl ConnectionTrait, v: NewVersion<'_>) -> Result<i64, DbErr> {
    let row = one::<Id>(
        conn,
        "INSERT INTO dataset_versions (dataset_id, version, number, root, split, seed, group_by, classes_json, \
         report_json, item_count, created_at, created_by, pseudonym_key, ready) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 0) RETURNING id",
        values![
            v.dataset_id,
            v.version,
            v.number,
            v.root,
            v.split,
            v.seed,
            v.group_by,
            v.classes_json,
            v.report_json,
            v.item_count,
            v.created_at,
            v.created_by,
            v.pseudonym_key.map(str::to_owned)
        ],
    )
    .await?;
    row.map(|r| r.id).ok_or_else(|| DbErr::RecordNotInserted)
}

pub async fn insert_items(conn: &impl ConnectionTrait, version_id: i64, items: &[DatasetItem]) -> Result<(), DbErr> {
    const WIDTH: usize = 9;
    for chunk in items.chunks(500) {
        let sql = format!(
            "INSERT INTO dataset_items (version_id, path, sha256, bytes, label, patient, split, view, acquired_at) VALUES {}",
            placeholders(chunk.len(), WIDTH)
        );
        let mut vals: Vec<Value> = Vec::with_capacity(chunk.len() * WIDTH);
        for item in chunk {
            vals.extend(values![
                version_id,
                item.path.clone(),
                item.sha256.clone(),
                item.bytes as i64,
                item.label.clone(),
                item.patient.clone(),
                item.split.as_str(),
                item.view.clone(),
                item.acquired_at.clone(),
            ]);
        }
        exec(conn, &sql, vals).await?;
    }
    Ok(())
}

pub async fn mark_ready(conn: &impl ConnectionTrait, version_id: i64) -> Result<(), DbErr> {
    exec(conn, "UPDATE dataset_versions SET ready = 1 WHERE id = $1", values![version_id]).await?;
    Ok(())
}

/// Deletes a version that never became ready, with its items (a failed or abandoned
/// registration). Whole versions are never deleted.
pub async fn delete_unready(conn: &impl ConnectionTrait, version_id: i64) -> Result<(), DbErr> {
    exec(
        conn,
        "DELETE FROM dataset_items WHERE version_id = (SELECT id FROM dataset_versions WHERE id = $1 AND ready = 0)",
        values![version_id],
    )
    .await?;
    exec(conn, "DELETE FROM dataset_versions WHERE id = $1 AND ready = 0", values![version_id]).await?;
    Ok(())
}

/// The pseudonym key ids a dataset's whole versions were registered with (none for older ones).
pub async fn pseudonym_keys(conn: &impl ConnectionTrait, dataset_id: i64) -> Result<Vec<(i64, String)>, DbErr> {
    #[derive(FromQueryResult)]
    struct Key {
        number: i64,
        pseudonym_key: String,
    }
    Ok(all::<Key>(
        conn,
        "SELECT number, pseudonym_key FROM dataset_versions WHERE dataset_id = $1 AND ready = 1 AND pseudonym_key IS NOT NULL \
         ORDER BY number",
        values![dataset_id],
    )
    .await?
    .into_iter()
    .map(|k| (k.number, k.pseudonym_key))
    .collect())
}

pub async fn split_counts(conn: &impl ConnectionTrait, version_id: i64) -> Result<Vec<SplitCountRow>, DbErr> {
    all(
        conn,
        "SELECT label, split, COUNT(*) AS n FROM dataset_items WHERE version_id = $1 GROUP BY label, split ORDER BY label, split",
        values![version_id],
    )
    .await
}

/// Items of the given splits, in path order.
pub async fn items(conn: &impl ConnectionTrait, version_id: i64, splits: &[&str]) -> Result<Vec<ItemRow>, DbErr> {
    let marks: Vec<String> = (0..splits.len()).map(|i| format!("${}", i + 2)).collect();
    let mut vals = values![version_id];
    vals.extend(splits.iter().map(|s| Value::from(*s)));
    all(
        conn,
        &format!(
            "SELECT path, sha256, bytes, label, patient, split, view, acquired_at FROM dataset_items \
             WHERE version_id = $1 AND split IN ({}) ORDER BY path",
            marks.join(", ")
        ),
        vals,
    )
    .await
}
