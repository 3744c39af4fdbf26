//! Stored predictions (issue 14): per run and split, each image's predicted class and class
//! probabilities, from which every metric on a page can be recomputed and the patient-level
//! intervals drawn. One row per (run, split): the validation predictions of the run's best
//! epoch (replaced when a later epoch is better), and a promoted run's test predictions.
//! `body` is JSON `[[item_id, predicted, [p_0, ..., p_n-1]], ...]` with probabilities rounded to
//! six decimals; item ids are `dataset_items` rows, whose patient hash and label are read from
//! there, so nothing here names a patient.

use sea_orm_migration::prelude::*;

crate::ddl_migration!("m014_predictions");

const UP: &str = "
CREATE TABLE predictions (
    run_id BIGINT NOT NULL REFERENCES runs(id),
    split TEXT NOT NULL,
    epoch BIGINT,
    images BIGINT NOT NULL,
    body TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, split)
)";

const DOWN: &str = "DROP TABLE predictions";
