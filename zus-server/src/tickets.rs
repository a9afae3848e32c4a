//! Tickets: how a user who does not own a mount reaches its files through the fast path.
//!
//! The kernel checks a user's permissions when the user opens a file through the FUSE mount. The
//! preload library then asks the bridge for a ticket (`ZUFS_IOC_TICKET` on the open fd); the
//! bridge has zusd issue one for that inode, that uid and that access (`OpCode::Ticket`), and
//! revokes it when the kernel releases the open file. A client attached to a mount it does not
//! own ("ticketed") may send data ops only, each showing a ticket of its own uid for the op's
//! inode, and writes only with a ticket issued for writing. A ticket is 63 random bits: a
//! client cannot guess another's, and one that leaks to another user does not pass the uid check.

use std::collections::HashMap;
use std::sync::RwLock;

use zus_api::Errno;

/// What one ticket allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The inode.
    pub ino: u64,
    /// The user it was issued to.
    pub uid: u32,
    /// Issued for a file opened for writing.
    pub writable: bool,
    /// The bridge (client id) that issued it; its tickets go when it disconnects.
    pub issuer: u32,
}

/// The live tickets of one mount (a read lock per op of a ticketed client: ZTs check in
/// parallel; issuing and revoking are rare).
#[derive(Debug, Default)]
pub struct Tickets {
    live: RwLock<HashMap<u64, Ticket>>,
}

/// 63 random bits, never 0 (0 means "no ticket").
fn random_ticket() -> Result<u64, Errno> {
    use std::io::Read;
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).map_err(|_| Errno::EIO)?;
    Ok((u64::from_le_bytes(b) >> 1).max(1))
}

impl Tickets {
    fn lock(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Ticket>> {
        self.live.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Ticket>> {
        self.live.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Issues a ticket.
    ///
    /// # Errors
    /// `EIO` when no random bits can be had.
    pub fn issue(&self, t: Ticket) -> Result<u64, Errno> {
        let mut m = self.lock();
        loop {
            let id = random_ticket()?;
            if let std::collections::hash_map::Entry::Vacant(e) = m.entry(id) {
                e.insert(t);
                return Ok(id);
            }
        }
    }

    /// Revokes `id`, which `issuer` issued.
    ///
    /// # Errors
    /// `EINVAL` for a ticket that is not live or not the issuer's.
    pub fn revoke(&self, issuer: u32, id: u64) -> Result<(), Errno> {
        let mut m = self.lock();
        match m.get(&id) {
            Some(t) if t.issuer == issuer => {
                m.remove(&id);
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// Drops every ticket `issuer` issued.
    pub fn drop_issuer(&self, issuer: u32) {
        self.lock().retain(|_, t| t.issuer != issuer);
    }

    /// Checks that ticket `id` lets user `uid` do an op on `ino` (a write when `write`).
    ///
    /// # Errors
    /// `EACCES` when it does not.
    pub fn check(&self, id: u64, uid: u32, ino: u64, write: bool) -> Result<(), Errno> {
        match self.read().get(&id) {
            Some(t) if t.ino == ino && t.uid == uid && (t.writable || !write) => Ok(()),
            _ => Err(Errno::EACCES),
        }
    }

    /// Live tickets.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no ticket is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ticket_allows_its_inode_user_and_access_only() {
        let t = Tickets::default();
        let ro = t.issue(Ticket { ino: 5, uid: 1000, writable: false, issuer: 1 }).unwrap();
        let rw = t.issue(Ticket { ino: 5, uid: 1000, writable: true, issuer: 1 }).unwrap();
        assert!(ro != 0 && rw != 0 && ro != rw && ro < 1 << 63);
        assert_eq!(t.check(ro, 1000, 5, false), Ok(()));
        assert_eq!(t.check(ro, 1000, 5, true), Err(Errno::EACCES));
        assert_eq!(t.check(rw, 1000, 5, true), Ok(()));
        assert_eq!(t.check(rw, 1001, 5, false), Err(Errno::EACCES), "another user");
        assert_eq!(t.check(rw, 1000, 6, false), Err(Errno::EACCES), "another inode");
        assert_eq!(t.check(0, 1000, 5, false), Err(Errno::EACCES), "no ticket");
        assert_eq!(t.revoke(2, rw), Err(Errno::EINVAL), "not the issuer");
        t.revoke(1, rw).unwrap();
        assert_eq!(t.check(rw, 1000, 5, false), Err(Errno::EACCES), "revoked");
        t.drop_issuer(1);
        assert!(t.is_empty());
    }
}
