//! Frozen dataset versions: registered once from a manifest, identified by its hash,
//! never changed afterwards.

use protocol::Split;
use protocol::api::{DatasetItem, DatasetSummary, DatasetVersionBrief, DatasetVersionInfo, GroupBy, RegisterDataset, SplitCount};
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

use crate::clock::now_ms;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store;
use crate::store::datasets::{NewVersion, VersionRow};

pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 100 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The version id: sha256 over the dataset name, the split parameters and every item
/// in path order, so the same content always gets the same id.
pub fn version_hash(req: &RegisterDataset) -> String {
    let mut h = Sha256::new();
    let mut field = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    field("cobb-dataset-v1");
    field(&req.name);
    field(&req.split);
    field(&req.seed.to_string());
    field(match req.group_by {
        GroupBy::Patient => "patient",
        GroupBy::None => "none",
    });
    field(&req.classes.join("\n"));
    let mut items: Vec<&DatasetItem> = req.items.iter().collect();
    items.sort_by(|a, b| a.path.cmp(&b.path));
    for item in items {
        field(&item.path);
        field(&item.sha256);
        field(&item.bytes.to_string());
        field(&item.label);
        field(item.patient.as_deref().unwrap_or(""));
        field(item.split.as_str());
        field(item.view.as_deref().unwrap_or(""));
        field(item.acquired_at.as_deref().unwrap_or(""));
    }
    hex::encode(h.finalize())
}

fn check(req: &RegisterDataset) -> Result<(), ApiError> {
    let bad = |m: String| Err(ApiError::InvalidRequest(m));
    if !valid_name(&req.name) {
        return bad(format!("`{}` is not a valid dataset name: use letters, digits, '-', '_' or '.'", req.name));
    }
    protocol::api::parse_split_ratios(&req.split).map_err(ApiError::InvalidRequest)?;
    let classes: BTreeSet<&str> = req.classes.iter().map(String::as_str).collect();
    if classes.is_empty() || classes.len() != req.classes.len() {
        return bad("classes must be a non-empty list without repeats".to_owned());
    }
    if req.items.is_empty() {
        return bad("the manifest has no items; nothing would be registered".to_owned());
    }
    let mut paths = BTreeSet::new();
    for item in &req.items {
        if item.path.is_empty() || !paths.insert(item.path.as_str()) {
            return bad(format!("item path `{}` is empty or repeated", item.path));
        }
        protocol::api::check_item_path(&item.path).map_err(ApiError::InvalidRequest)?;
        if item.sha256.len() != 64 || !item.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad(format!("item `{}` has an invalid sha256", item.path));
        }
        if !classes.contains(item.label.as_str()) {
            return bad(format!("item `{}` has label `{}`, which is not among the classes", item.path, item.label));
        }
    }
    Ok(())
}

/// Items inserted per transaction: a 250,000-item registration in one transaction held
/// SQLite's one write connection for 17 s and stalled heartbeats; between batches other
/// writes get their turn.
pub const ITEMS_PER_TRANSACTION: usize = 5_000;

/// A registration that has not finished after this long died (its server stopped); its
/// leftover rows are removed when the same content is registered again.
const ABANDONED_AFTER_MS: i64 = 60 * 60 * 1000;

/// Registers a version: the version row first (not visible), then its items in bounded
/// transactions, then, in one last transaction, it becomes visible with its audit event. A
/// registration that fails part-way removes what it inserted; nothing else is touched.
pub async fn register(state: &AppState, actor: &str, req: RegisterDataset) -> Result<DatasetVersionInfo, ApiError> {
    check(&req)?;
    let version = version_hash(&req);
    let now = now_ms();
    let tx = state.db.write.begin().await?;
    if let Some(existing) = store::datasets::version_by_hash(&tx, &version).await? {
        if existing.ready == 1 {
            tx.commit().await?;
            return info(&state.db.read, existing, false).await;
        }
        if now - existing.created_at < ABANDONED_AFTER_MS {
            return Err(ApiError::Conflict(format!(
                "this content of `{}` is being registered right now (started by {}); wait for that registration to finish",
                req.name, existing.created_by
            )));
        }
        store::datasets::delete_unready(&tx, existing.id).await?;
    }
    let dataset_id = store::datasets::create_dataset(&tx, &req.name, now).await?;
    // Pseudonyms made with another key never match: patients could not be followed from one
    // version to the next, and a patient could land in two splits of related versions.
    let keys = store::datasets::pseudonym_keys(&tx, dataset_id).await?;
    if let Some((number, key)) = keys.last()
        && req.pseudonym_key.as_deref() != Some(key.as_str())
    {
        return Err(ApiError::Conflict(format!(
            "version {number} of `{}` was registered with the pseudonym key {key}, and this registration {}; register with \
             that site's key (cobb dataset key show tells a key's id), or under a new dataset name",
            req.name,
            match &req.pseudonym_key {
                Some(other) => format!("used the key {other}"),
                None => "names no key".to_owned(),
            }
        )));
    }
    let number = store::datasets::next_number(&tx, dataset_id).await?;
    let classes_json = serde_json::to_string(&req.classes).map_err(anyhow::Error::from)?;
    let report_json = serde_json::to_string(&req.report).map_err(anyhow::Error::from)?;
    let group_by = match req.group_by {
        GroupBy::Patient => "patient",
        GroupBy::None => "none",
    };
    let version_id = store::datasets::insert_version(
        &tx,
        NewVersion {
            dataset_id,
            version: &version,
            number,
            root: &req.root,
            split: &req.split,
            seed: req.seed as i64,
            group_by,
            classes_json: &classes_json,
            report_json: &report_json,
            item_count: req.items.len() as i64,
            created_at: now,
            created_by: actor,
            pseudonym_key: req.pseudonym_key.as_deref(),
        },
    )
    .await?;
    tx.commit().await?;
    match insert_items_and_publish(state, actor, &req, &version, number, version_id).await {
        Ok(()) => {}
        Err(e) => {
            if let Err(cleanup) = store::datasets::delete_unready(&state.db.write, version_id).await {
                tracing::error!(version = %version, error = %cleanup, "could not remove a failed registration's rows; a later one removes them");
            }
            return Err(e);
        }
    }
    let row = store::datasets::version_by_id(&state.db.write, version_id)
        .await?
        .ok_or_else(|| ApiError::not_found("dataset version", &version))?;
    info(&state.db.write, row, true).await
}

async fn insert_items_and_publish(
    state: &AppState,
    actor: &str,
    req: &RegisterDataset,
    version: &str,
    number: i64,
    version_id: i64,
) -> Result<(), ApiError> {
    for batch in req.items.chunks(ITEMS_PER_TRANSACTION) {
        let tx = state.db.write.begin().await?;
        store::datasets::insert_items(&tx, version_id, batch).await?;
        tx.commit().await?;
    }
    let tx = state.db.write.begin().await?;
    store::datasets::mark_ready(&tx, version_id).await?;
    super::audit::append(
        &tx,
        super::audit::Event {
            actor,
            action: protocol::AuditAction::DatasetRegister,
            experiment: None,
            run_id: None,
            details: json!({"dataset": req.name, "version": version, "number": number, "items": req.items.len(),
                            "skipped": req.report.len(), "pseudonym_key": req.pseudonym_key}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn info(conn: &impl ConnectionTrait, row: VersionRow, created: bool) -> Result<DatasetVersionInfo, ApiError> {
    let mut counts: BTreeMap<String, SplitCount> = BTreeMap::new();
    let classes = row.classes()?;
    for class in &classes {
        counts.insert(class.clone(), SplitCount { label: class.clone(), train: 0, val: 0, test: 0 });
    }
    for c in store::datasets::split_counts(conn, row.id).await? {
        let entry = counts.entry(c.label.clone()).or_insert_with(|| SplitCount { label: c.label.clone(), train: 0, val: 0, test: 0 });
        match c.split.as_str() {
            "train" => entry.train = c.n as u64,
            "val" => entry.val = c.n as u64,
            _ => entry.test = c.n as u64,
        }
    }
    // Classes in their registered order.
    let mut ordered: Vec<SplitCount> = classes.iter().filter_map(|c| counts.remove(c)).collect();
    ordered.extend(counts.into_values());
    let report = row.report()?;
    Ok(DatasetVersionInfo {
        dataset: row.dataset,
        version: row.version,
        number: row.number,
        root: row.root,
        split: row.split,
        seed: row.seed as u64,
        group_by: if row.group_by == "none" { GroupBy::None } else { GroupBy::Patient },
        classes,
        items: row.item_count as u64,
        counts: ordered,
        report,
        created_at: row.created_at,
        created_by: row.created_by,
        pseudonym_key: row.pseudonym_key,
        created,
    })
}

/// Resolves `name` plus an optional version (hash, hash prefix, or `vN`) to one
/// version: the newest when none is given.
pub async fn resolve(conn: &impl ConnectionTrait, name: &str, version: Option<&str>) -> Result<VersionRow, ApiError> {
    if store::datasets::dataset_id(conn, name).await?.is_none() {
        return Err(ApiError::DatasetNotFound(name.to_owned()));
    }
    let wanted = version.unwrap_or("");
    let mut rows = if let Some(number) = wanted.strip_prefix('v').and_then(|n| n.parse::<i64>().ok()) {
        store::datasets::versions(conn, name, "").await?.into_iter().filter(|r| r.number == number).collect()
    } else {
        store::datasets::versions(conn, name, wanted).await?
    };
    match rows.len() {
        0 => Err(ApiError::not_found("dataset version", format!("{name}@{wanted}"))),
        1 => Ok(rows.remove(0)),
        _ if version.is_none() => Ok(rows.remove(0)),
        n => Err(ApiError::InvalidRequest(format!(
            "version prefix `{wanted}` matches {n} versions of `{name}`; give more characters of the hash"
        ))),
    }
}

pub async fn show(state: &AppState, name: &str, version: Option<&str>) -> Result<DatasetVersionInfo, ApiError> {
    let row = resolve(&state.db.read, name, version).await?;
    info(&state.db.read, row, false).await
}

pub async fn list(state: &AppState) -> Result<Vec<DatasetSummary>, ApiError> {
    let mut out = Vec::new();
    for name in store::datasets::dataset_names(&state.db.read).await? {
        let versions = store::datasets::versions(&state.db.read, &name, "")
            .await?
            .into_iter()
            .map(|v| DatasetVersionBrief { version: v.version, number: v.number, items: v.item_count as u64, created_at: v.created_at })
            .collect();
        out.push(DatasetSummary { name, versions });
    }
    Ok(out)
}

/// Every item of a version with its split, for audits (reviewer role): lets anyone check
/// that no patient crosses splits. Test items are listed by path only; their pixels never
/// leave the server through this.
pub async fn items(state: &AppState, name: &str, version: Option<&str>) -> Result<protocol::api::ItemList, ApiError> {
    let row = resolve(&state.db.read, name, version).await?;
    item_list(&state.db.read, row, &[Split::Train, Split::Val, Split::Test]).await
}

/// The items of `splits` of a version, with its root and classes.
pub(crate) async fn item_list(conn: &impl ConnectionTrait, row: VersionRow, splits: &[Split]) -> Result<protocol::api::ItemList, ApiError> {
    let names: Vec<&str> = splits.iter().map(|s| s.as_str()).collect();
    let items = store::datasets::items(conn, row.id, &names).await?;
    let classes = row.classes()?;
    Ok(protocol::api::ItemList {
        dataset: row.dataset,
        version: row.version,
        root: row.root,
        classes,
        items: items.into_iter().map(crate::store::datasets::ItemRow::into_item).collect::<Result<_, _>>()?,
    })
}
