//! The server's integration suite: a real server on port 0, real databases, HTTP only.

mod helpers;

mod auth;
mod bad_input;
mod classify;
mod datasets;
mod early_stop;
mod evidence;
mod experiments;
mod hardening;
mod leases;
mod migration;
mod observability;
mod promotions;
mod tpe;
mod ui;
