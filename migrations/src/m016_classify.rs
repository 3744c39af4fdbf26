//! The promoted model at work (issue 15): each promotion's per-class auto-accept thresholds
//! (JSON, fixed from the run's validation predictions when it is promoted), classification
//! batches (one `classify` job each) and their images. An image row holds only the file's path
//! relative to the batch's folder, its sha256, the prediction, the confidence and the decision
//! (with the reviewer's label once reviewed): no pixels, no patient identifiers.

use sea_orm_migration::prelude::*;

crate::ddl_migration!("m016_classify");

const UP: &str = "
ALTER TABLE promotions ADD COLUMN auto_accept_json TEXT;
CREATE TABLE classify_batches (
    id {ID},
    experiment_id BIGINT NOT NULL REFERENCES experiments(id),
    promotion_id BIGINT NOT NULL REFERENCES promotions(id),
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    actor TEXT NOT NULL,
    path TEXT NOT NULL,
    batch_size BIGINT NOT NULL,
    images_per_second DOUBLE PRECISION,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE UNIQUE INDEX classify_batches_by_job ON classify_batches (job_id);
CREATE INDEX classify_batches_by_experiment ON classify_batches (experiment_id, id);
CREATE TABLE classify_items (
    batch_id BIGINT NOT NULL REFERENCES classify_batches(id),
    path TEXT NOT NULL,
    sha256 TEXT,
    predicted BIGINT,
    confidence DOUBLE PRECISION,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    reviewed_label TEXT,
    reviewed_by TEXT,
    reviewed_at BIGINT,
    PRIMARY KEY (batch_id, path)
)";

const DOWN: &str = "
DROP TABLE classify_items;
DROP TABLE classify_batches;
ALTER TABLE promotions DROP COLUMN auto_accept_json
";
