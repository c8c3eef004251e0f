//! The dashboard's share of the hub's state: sessions, the login limit,
//! the password-hashing places and the activity counts. It knows nothing
//! of the hub that holds it.

use std::sync::Arc;

use super::admins;
use super::sessions::{LoginLimit, Sessions};
use crate::activity::Activity;

/// The dashboard's share of the hub's state.
#[derive(Default)]
pub struct Dashboard {
    pub sessions: Sessions,
    pub login_limit: LoginLimit,
    pub hashing: Hashing,
    pub activity: Arc<Activity>,
}

/// Password checks running at once. Each costs argon2id's 19 MiB and a
/// core for a while; past this a login is answered 429 before hashing, so
/// a flood of logins from many addresses costs the hub neither memory nor
/// its cores. The working memory is kept and reused, so the hub holds at
/// most one copy per place, ever.
pub struct Hashing {
    turns: Arc<tokio::sync::Semaphore>,
    memory: Arc<std::sync::Mutex<Vec<Vec<argon2::Block>>>>,
}

/// One place to hash a password; gives its memory back when dropped.
pub struct HashTurn {
    _turn: tokio::sync::OwnedSemaphorePermit,
    /// The memory the hash works in.
    pub memory: Vec<argon2::Block>,
    pool: Arc<std::sync::Mutex<Vec<Vec<argon2::Block>>>>,
}

impl Default for Hashing {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Hashing {
            turns: Arc::new(tokio::sync::Semaphore::new(cores.clamp(1, 4))),
            memory: Default::default(),
        }
    }
}

impl Hashing {
    /// A place to hash now, if there is one.
    pub fn try_start(&self) -> Option<HashTurn> {
        let turn = self.turns.clone().try_acquire_owned().ok()?;
        let memory = self
            .memory
            .lock()
            .unwrap()
            .pop()
            .unwrap_or_else(admins::hash_memory);
        Some(HashTurn {
            _turn: turn,
            memory,
            pool: self.memory.clone(),
        })
    }
}

impl Drop for HashTurn {
    fn drop(&mut self) {
        let memory = std::mem::take(&mut self.memory);
        self.pool.lock().unwrap().push(memory);
    }
}
