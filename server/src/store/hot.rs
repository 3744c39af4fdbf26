//! PostgreSQL connections that each HTTP worker thread keeps for itself, for the metric hot
//! path (one fenced statement per epoch report).
//!
//! Why not the pool: sqlx's pool pings every connection it gets back (a round trip after each
//! statement; sqlx-core 0.8 `return_to_pool`, not configurable) and hands its idle connections
//! out first in, first out. A worker's consecutive batches therefore went to a different,
//! cold PostgreSQL backend each time, the previous one still busy answering the ping, and the
//! answer was routed through whichever thread's reactor had opened that socket
//! (docs/benchmarks.md, "Connections that stay with their thread"). Here a thread takes its own
//! most recently used connection (last in, first out) and never pings it; a thread opens at
//! most [`PER_THREAD`], the server at most its `max`, and beyond those the caller uses the pool
//! as before.
//!
//! Actix runs each request on the worker thread that accepted it, so a connection opened there
//! is used only there. Idle connections are keyed by server (several servers can share a test
//! process) and closed when their thread ends.

use sea_orm::sqlx::postgres::PgConnectOptions;
use sea_orm::sqlx::{Connection, PgConnection};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The most connections one thread opens for one server (each thread takes its share of
/// concurrent batches; more wait for none: they use the pool).
const PER_THREAD: usize = 4;

/// What these connections call themselves in PostgreSQL's `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "cobb server (metric writes)";

pub struct HotConnections {
    id: u64,
    options: PgConnectOptions,
    open: Arc<AtomicUsize>,
    /// Out in requests now (all threads).
    busy: Arc<AtomicUsize>,
    max: usize,
}

/// An open connection, counted in its server's `open` until it is closed (dropped), wherever
/// that happens: in a request, or with its thread's idle list when the thread ends.
struct Slot {
    conn: PgConnection,
    open: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One thread's connections to one server's database: idle ones, last used on top, and how
/// many are out in requests.
#[derive(Default)]
struct Local {
    idle: Vec<Slot>,
    out: usize,
}

thread_local! {
    static LOCAL: RefCell<HashMap<u64, Local>> = RefCell::new(HashMap::new());
}

/// A connection taken by one request: [`Hot::keep`] gives it back to this thread after a
/// statement that left it usable; dropped otherwise (closed, and its slot freed).
pub struct Hot {
    server: u64,
    slot: Option<Slot>,
    busy: Arc<AtomicUsize>,
}

impl HotConnections {
    /// At most `max` connections for the whole server, opened with the pool's options and
    /// named [`APPLICATION_NAME`] (as `pg_stat_activity` shows them).
    pub fn new(options: PgConnectOptions, max: usize) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let options = options.application_name(APPLICATION_NAME);
        HotConnections {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            options,
            open: Arc::new(AtomicUsize::new(0)),
            busy: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// This thread's most recently used idle connection, else a new one while this thread has
    /// fewer than [`PER_THREAD`] and the server fewer than its `max`; None otherwise, or when
    /// the connection could not be opened (the caller uses the pool, which reports a database
    /// that is down).
    pub async fn get(&self) -> Option<Hot> {
        enum Next {
            Take(Slot),
            Open,
            Pool,
        }
        let next = LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let mine = local.entry(self.id).or_default();
            if let Some(slot) = mine.idle.pop() {
                mine.out += 1;
                Next::Take(slot)
            } else if mine.out < PER_THREAD && self.open.fetch_add(1, Ordering::AcqRel) < self.max {
                mine.out += 1;
                Next::Open
            } else {
                if mine.out < PER_THREAD {
                    self.open.fetch_sub(1, Ordering::AcqRel);
                }
                Next::Pool
            }
        });
        let slot = match next {
            Next::Take(slot) => slot,
            Next::Pool => return None,
            Next::Open => {
                let opened = PgConnection::connect_with(&self.options).await;
                match opened {
                    Ok(conn) => Slot { conn, open: self.open.clone() },
                    Err(e) => {
                        self.open.fetch_sub(1, Ordering::AcqRel);
                        back_from_out(self.id);
                        tracing::warn!(error = %e, "could not open a connection for metric writes; using the pool");
                        return None;
                    }
                }
            }
        };
        self.busy.fetch_add(1, Ordering::AcqRel);
        Some(Hot { server: self.id, slot: Some(slot), busy: self.busy.clone() })
    }

    /// Connections open now and how many of them are idle, for `/metrics`.
    pub fn counts(&self) -> (usize, usize) {
        let open = self.open.load(Ordering::Acquire);
        (open, open.saturating_sub(self.busy.load(Ordering::Acquire)))
    }
}

impl Hot {
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.slot.as_mut().expect("a Hot holds its connection until it is kept or dropped").conn
    }

    /// Back to this thread's idle connections, to be used next (closed instead if the thread
    /// is ending).
    pub fn keep(mut self) {
        if let Some(slot) = self.slot.take() {
            let _ = LOCAL.try_with(|local| local.borrow_mut().entry(self.server).or_default().idle.push(slot));
        }
    }
}

impl Drop for Hot {
    /// The connection is back (kept) or closed (its slot dropped with it): either way it is no
    /// longer out.
    fn drop(&mut self) {
        drop(self.slot.take());
        self.busy.fetch_sub(1, Ordering::AcqRel);
        back_from_out(self.server);
    }
}

/// One connection of `server` is no longer out in a request on this thread. `try_with`:
/// nothing to count when the thread's list is gone (the thread is ending).
fn back_from_out(server: u64) {
    let _ = LOCAL.try_with(|local| {
        if let Some(mine) = local.borrow_mut().get_mut(&server) {
            mine.out = mine.out.saturating_sub(1);
        }
    });
}

/// Whether a connection that returned `e` must be closed rather than used again: anything but
/// the database refusing one statement (after which, outside a transaction, it is ready), and
/// the refusals that end the session (SQLSTATE class 08, connection exception, and 57P*, the
/// server shutting down or an administrator terminating the backend).
pub fn connection_lost(e: &sea_orm::sqlx::Error) -> bool {
    match e {
        sea_orm::sqlx::Error::Database(e) => e.code().is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => true,
    }
}
