//! A lease belongs to the token that took it (`holder`, the token's name): another token that
//! learns the lease id cannot write with it. Leases from before have none and stay usable.

use sea_orm_migration::prelude::*;

crate::ddl_migration!("m006_lease_holder");

const UP: &str = "ALTER TABLE leases ADD COLUMN holder TEXT";

const DOWN: &str = "ALTER TABLE leases DROP COLUMN holder";
