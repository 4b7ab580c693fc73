//! A redb storage backend that simulates a power cut.
//!
//! Modelled on redb's own `tests/crash_consistency.rs`: every write is applied to the live image
//! at once, and a completed `sync_data` copies the live image to the durable one. What a power
//! cut leaves behind is the durable image plus any subset of the writes issued since the last
//! completed sync, each of them applied sector by sector (512-byte sectors are assumed atomic,
//! nothing else: a write of a whole page may survive in part), in issue order; a file extension
//! that was not synced may or may not survive. This is what `fsync` promises and no more.
//!
//! A cut is armed for the n-th `sync_data` from now ([`PowerCutDisk::cut_at_sync`]) or made at
//! once ([`PowerCutDisk::cut_now`]). The sync that meets the cut does not complete: it and every
//! later operation fail, as the process would never learn anything more. So an append whose
//! commit returned had its fsync completed before the cut, and must be in every image.
//!
//! Used through `#[path]` by the tests that need it (it is not part of `common/mod.rs`).
#![allow(dead_code)]

use std::io::ErrorKind;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rand::Rng;
use redb::{Database, DatabaseError, StorageBackend};

/// Sector size assumed atomic on the simulated medium.
pub const SECTOR: usize = 512;

#[derive(Debug)]
enum Op {
    Write { offset: usize, data: Vec<u8> },
    SetLen(usize),
}

#[derive(Debug, Default)]
struct State {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Operations issued since the last completed sync, in order.
    unsynced: Vec<Op>,
    syncs: u64,
    /// The sync with this number does not complete: power is lost during it.
    cut_at: Option<u64>,
    dead: bool,
}

/// Cheap to clone; clones share the same disk.
#[derive(Debug, Clone, Default)]
pub struct PowerCutDisk {
    state: Arc<Mutex<State>>,
}

fn lost() -> std::io::Error {
    std::io::Error::other("simulated power cut: the machine is off")
}

impl PowerCutDisk {
    /// An empty disk.
    pub fn new() -> PowerCutDisk {
        PowerCutDisk::default()
    }

    /// A disk holding `image` durably (what a machine finds after it is powered on again).
    pub fn from_image(image: Vec<u8>) -> PowerCutDisk {
        let state = State {
            live: image.clone(),
            durable: image,
            ..State::default()
        };
        PowerCutDisk {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Completed or attempted `sync_data` calls so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Power is lost during the `n`-th sync from now (`n >= 1`).
    pub fn cut_at_sync(&self, n: u64) {
        let mut s = self.lock();
        s.cut_at = Some(s.syncs + n.max(1));
    }

    /// Power is lost now.
    pub fn cut_now(&self) {
        self.lock().dead = true;
    }

    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// How many writes and length changes were issued since the last completed sync.
    pub fn unsynced_ops(&self) -> usize {
        self.lock().unsynced.len()
    }

    /// What the medium holds after the cut: the durable image plus a random subset of the
    /// unsynced writes' sectors (each kept with probability `keep`, 0.0..=1.0).
    pub fn crash_image(&self, rng: &mut impl Rng, keep: f64) -> Vec<u8> {
        let s = self.lock();
        let mut image = s.durable.clone();
        for op in &s.unsynced {
            match op {
                Op::SetLen(len) => {
                    if rng.random_bool(keep) {
                        image.resize(*len, 0);
                    }
                }
                Op::Write { offset, data } => {
                    // Split at absolute sector boundaries; each piece survives or not.
                    let mut pos = 0;
                    while pos < data.len() {
                        let abs = offset + pos;
                        let end = (abs / SECTOR + 1) * SECTOR - offset;
                        let end = end.min(data.len());
                        if rng.random_bool(keep) {
                            if image.len() < offset + end {
                                image.resize(offset + end, 0);
                            }
                            image[abs..offset + end].copy_from_slice(&data[pos..end]);
                        }
                        pos = end;
                    }
                }
            }
        }
        image
    }

    /// Opens a redb database on this disk with the spool's builder settings.
    pub fn open(&self) -> Result<Database, DatabaseError> {
        audit_manager::spool::store::builder().create_with_backend(self.clone())
    }

    /// A spool opener on this disk.
    pub fn opener(&self) -> audit_manager::spool::Opener {
        let disk = self.clone();
        Arc::new(move || disk.open())
    }
}

impl StorageBackend for PowerCutDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        let s = self.lock();
        if s.dead {
            return Err(lost());
        }
        Ok(s.live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let s = self.lock();
        if s.dead {
            return Err(lost());
        }
        let offset = usize::try_from(offset).map_err(std::io::Error::other)?;
        let end = offset + out.len();
        if end > s.live.len() {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        out.copy_from_slice(&s.live[offset..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut s = self.lock();
        if s.dead {
            return Err(lost());
        }
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        s.live.resize(len, 0);
        s.unsynced.push(Op::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut s = self.lock();
        if s.dead {
            return Err(lost());
        }
        s.syncs += 1;
        if s.cut_at == Some(s.syncs) {
            s.dead = true;
            return Err(lost());
        }
        s.durable = s.live.clone();
        s.unsynced.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut s = self.lock();
        if s.dead {
            return Err(lost());
        }
        let offset = usize::try_from(offset).map_err(std::io::Error::other)?;
        let end = offset + data.len();
        if end > s.live.len() {
            s.live.resize(end, 0);
        }
        s.live[offset..end].copy_from_slice(data);
        s.unsynced.push(Op::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }
}
