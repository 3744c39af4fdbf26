//! Keyed patient pseudonyms and batched registrations (issue 17).
//!
//! A dataset version records the id of the site key its pseudonyms were made with
//! (`pseudonym_key`; never the key, which the server does not have); versions from before
//! have none. The unkeyed installation salt the server used to serve is deleted: nothing
//! needs it any more, and whoever held it together with the database could reverse the
//! older versions' pseudonyms of small patient ids. A version is `ready` once all its items
//! are in; registrations insert items in bounded transactions and become visible at the end.

use sea_orm_migration::prelude::*;

crate::ddl_migration!("m008_keyed_pseudonyms");

const UP: &str = "
ALTER TABLE dataset_versions ADD COLUMN pseudonym_key TEXT;
ALTER TABLE dataset_versions ADD COLUMN ready BIGINT NOT NULL DEFAULT 1;
DELETE FROM settings WHERE key = 'installation_salt'
";

const DOWN: &str = "
ALTER TABLE dataset_versions DROP COLUMN ready;
ALTER TABLE dataset_versions DROP COLUMN pseudonym_key
";
