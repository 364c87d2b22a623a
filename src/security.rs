//! The cluster secret: the keys derived from it, the proofs of the forwarding handshake, and the
//! sealing of gossip datagrams.
//!
//! A cluster secret is one or more lines of `cluster_secret_file` (or `WAMP_CLUSTER_SECRET`):
//! the first seals and proves, every one is accepted, so that a secret can be changed node by
//! node without splitting the cluster. From each secret HKDF-SHA256 (salted with the cluster id)
//! derives two keys: one for the HMAC-SHA256 proofs of the forwarding handshake, one for the
//! ChaCha20-Poly1305 sealing of gossip. The secret itself never leaves the node.
//!
//! A sealed datagram is `version (1) | sent at, Unix ms (8, big-endian) | nonce (12) |
//! ciphertext | tag (16)`; the first 9 bytes are the associated data, so the time cannot be
//! changed without the tag failing. A receiver drops datagrams sent further than
//! `gossip.replay_window_ms` from its own clock, and remembers the nonces of the ones it opened
//! within that window ([`ReplayGuard`]), so no node opens a datagram twice, and none opens an
//! old one. A datagram names neither its sender nor its receiver (addresses change under NAT),
//! so a captured one can still be delivered once to each other node within the window.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::Arc;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// The environment variable holding the cluster secret itself (the alternative to
/// `cluster_secret_file`, for containers).
pub const SECRET_ENV: &str = "WAMP_CLUSTER_SECRET";

/// The key the cluster secret comes from: its file (`cluster_secret_file`), which wins, or
/// [`SECRET_ENV`]; `None` when neither gives one.
pub(crate) fn secret_key(
    file: Option<&std::path::Path>,
    secret: Option<&Secret>,
) -> Option<&'static str> {
    match (file, secret) {
        (Some(_), _) => Some("cluster_secret_file"),
        (None, Some(_)) => Some(SECRET_ENV),
        (None, None) => None,
    }
}

/// Most secrets one node accepts at once (each is tried on every datagram that does not open
/// with the ones before it).
pub const MAX_SECRETS: usize = 8;

/// Bytes a sealed datagram has beyond the gossip message it carries.
pub const SEAL_OVERHEAD: usize = 1 + 8 + NONCE_LEN + TAG_LEN;

/// Bytes of a handshake nonce and of a handshake proof.
pub const HANDSHAKE_NONCE_LEN: usize = 32;

/// The sealed format's version byte.
const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + 8 + NONCE_LEN;

/// Nonces remembered by a [`ReplayGuard`]: far more than a node receives in a window (a few
/// hundred datagrams a second in a large cluster); past it the oldest are forgotten and
/// datagrams sent before them are refused as stale.
pub const REPLAY_MEMORY: usize = 65_536;

/// A secret as read from the configuration. Its `Debug` form does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps the text of one or more secrets (separated by whitespace).
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    /// The text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Splits the text of a secret file (or variable) into its secrets: separated by whitespace,
/// each at least [`MIN_SECRET_LEN`] visible ASCII characters, at least one and at most
/// [`MAX_SECRETS`]. The error says what is wrong without quoting any secret.
pub fn parse_secrets(text: &str) -> Result<Vec<&str>, String> {
    let secrets: Vec<&str> = text.split_whitespace().collect();
    if secrets.is_empty() {
        return Err("holds no secret".into());
    }
    if secrets.len() > MAX_SECRETS {
        return Err(format!(
            "holds {} secrets, more than {MAX_SECRETS}",
            secrets.len()
        ));
    }
    for (n, secret) in secrets.iter().enumerate() {
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "secret {} is shorter than {MIN_SECRET_LEN} bytes",
                n + 1
            ));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "secret {} holds characters other than visible ASCII",
                n + 1
            ));
        }
    }
    Ok(secrets)
}

/// The keys derived from the cluster's secrets, the first one used to seal and prove. Cheap to
/// clone.
#[derive(Clone)]
pub struct ClusterKeys {
    keys: Arc<[Keys]>,
}

struct Keys {
    handshake: [u8; 32],
    gossip: ChaCha20Poly1305,
}

impl fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKeys({} secrets)", self.keys.len())
    }
}

/// Which side of the handshake a proof is from: each proves with a label of its own, so a
/// proof cannot be reflected back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that dialled.
    Dialer,
    /// The side that accepted.
    Listener,
}

/// What a handshake proof covers: the dialer's hello as encoded, both nonces, and (in the
/// listener's proof) the version chosen.
#[derive(Debug, Clone, Copy)]
pub struct Transcript<'a> {
    /// The encoded hello.
    pub hello: &'a [u8],
    /// The listener's nonce.
    pub listener_nonce: &'a [u8; HANDSHAKE_NONCE_LEN],
    /// The dialer's nonce.
    pub dialer_nonce: &'a [u8; HANDSHAKE_NONCE_LEN],
    /// The protocol version the listener chose.
    pub version: u16,
    /// The listener's generation.
    pub generation: u64,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unopened {
    /// Not sealed with any of this node's secrets, or changed on the way.
    Unsealed,
    /// Sent further from now than the replay window.
    Stale,
    /// Opened before.
    Replayed,
}

impl Unopened {
    /// The reason's name, as metrics label it.
    pub fn name(self) -> &'static str {
        match self {
            Unopened::Unsealed => "unsealed",
            Unopened::Stale => "stale",
            Unopened::Replayed => "replayed",
        }
    }
}

impl ClusterKeys {
    /// Derives the keys of each secret (in order) for the cluster `cluster_id`.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>, cluster_id: &str) -> ClusterKeys {
        let keys = secrets
            .into_iter()
            .map(|secret| {
                let hkdf = Hkdf::<Sha256>::new(Some(cluster_id.as_bytes()), secret.as_bytes());
                let mut handshake = [0; 32];
                let mut gossip = [0; 32];
                // 32 bytes is far below HKDF-SHA256's limit of 8160: these cannot fail.
                let _ = hkdf.expand(b"wamp-cluster forward handshake v1", &mut handshake);
                let _ = hkdf.expand(b"wamp-cluster gossip seal v1", &mut gossip);
                Keys {
                    handshake,
                    gossip: ChaCha20Poly1305::new(&gossip.into()),
                }
            })
            .collect();
        ClusterKeys { keys }
    }

    /// The keys of the cluster secret a configuration names: read from `file`
    /// (`cluster_secret_file`), or given as `secret` (`WAMP_CLUSTER_SECRET`); `None` when
    /// neither is. The node reads them as it starts. An unreadable file or a bad secret is an
    /// error naming the key, never quoting a secret.
    pub fn load(
        file: Option<&std::path::Path>,
        secret: Option<&Secret>,
        cluster_id: &str,
    ) -> Result<Option<ClusterKeys>, crate::error::ConfigError> {
        use crate::error::ConfigError;
        let Some(key) = secret_key(file, secret) else {
            return Ok(None);
        };
        let text = match (file, secret) {
            (Some(path), _) => {
                std::borrow::Cow::Owned(std::fs::read_to_string(path).map_err(|err| {
                    ConfigError::invalid(key, format!("cannot read {}: {err}", path.display()))
                })?)
            }
            (None, secret) => std::borrow::Cow::Borrowed(secret.map(Secret::expose).unwrap_or("")),
        };
        let secrets = parse_secrets(&text).map_err(|message| ConfigError::invalid(key, message))?;
        Ok(Some(ClusterKeys::new(secrets, cluster_id)))
    }

    /// How many secrets.
    #[cfg(any(test, feature = "testkit"))]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no secret (such keys prove nothing and open nothing).
    #[cfg(any(test, feature = "testkit"))]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn mac(&self, key: usize, role: Role, t: &Transcript<'_>) -> Option<Hmac<Sha256>> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.keys.get(key)?.handshake).ok()?;
        mac.update(match role {
            Role::Dialer => b"dialer\0\0",
            Role::Listener => b"listener",
        });
        mac.update(&(t.hello.len() as u64).to_be_bytes());
        mac.update(t.hello);
        mac.update(t.listener_nonce);
        mac.update(t.dialer_nonce);
        if role == Role::Listener {
            mac.update(&t.version.to_be_bytes());
            mac.update(&t.generation.to_be_bytes());
        }
        Some(mac)
    }

    /// The proof of `role` over `t` with secret number `key` (0 is the first); zeros when
    /// there is no such secret, which no check accepts.
    pub fn prove(&self, key: usize, role: Role, t: &Transcript<'_>) -> [u8; 32] {
        self.mac(key, role, t)
            .map_or([0; 32], |mac| mac.finalize().into_bytes().into())
    }

    /// The number of the secret `proof` was made with, if any (compared in constant time).
    pub fn check(&self, role: Role, t: &Transcript<'_>, proof: &[u8; 32]) -> Option<usize> {
        (0..self.keys.len()).find(|&key| self.check_with(key, role, t, proof))
    }

    /// Whether `proof` was made with secret number `key`.
    pub fn check_with(&self, key: usize, role: Role, t: &Transcript<'_>, proof: &[u8; 32]) -> bool {
        self.mac(key, role, t)
            .is_some_and(|mac| mac.verify_slice(proof).is_ok())
    }

    /// Seals `message` (sent at `now_ms`, Unix milliseconds) with the first secret into `out`
    /// (cleared first). Fails only when there is no secret or the operating system gives no
    /// random bytes for the nonce.
    pub fn seal(&self, message: &[u8], now_ms: u64, out: &mut Vec<u8>) -> Result<(), NoRandom> {
        out.clear();
        let Some(keys) = self.keys.first() else {
            return Err(NoRandom);
        };
        let nonce: [u8; NONCE_LEN] = random()?;
        out.push(SEAL_VERSION);
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(message);
        let (header, body) = out.split_at_mut(HEADER_LEN);
        // Fails only beyond 256 GiB of message.
        let tag = keys
            .gossip
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &header[..9], body)
            .unwrap_or_default();
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens `datagram` into `out` (cleared first) unless it does not open with any secret, was
    /// sent outside `guard`'s window around `now_ms`, or was opened before.
    pub fn open(
        &self,
        datagram: &[u8],
        now_ms: u64,
        guard: &mut ReplayGuard,
        out: &mut Vec<u8>,
    ) -> Result<(), Unopened> {
        out.clear();
        if datagram.len() < HEADER_LEN + TAG_LEN || datagram[0] != SEAL_VERSION {
            return Err(Unopened::Unsealed);
        }
        let (header, rest) = datagram.split_at(HEADER_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut sent = [0; 8];
        sent.copy_from_slice(&header[1..9]);
        let sent_ms = u64::from_be_bytes(sent);
        let nonce = Nonce::from_slice(&header[9..]);
        let opened = self.keys.iter().any(|keys| {
            out.clear();
            out.extend_from_slice(body);
            keys.gossip
                .decrypt_in_place_detached(nonce, &header[..9], out, Tag::from_slice(tag))
                .is_ok()
        });
        if !opened {
            out.clear();
            return Err(Unopened::Unsealed);
        }
        let mut id = [0; NONCE_LEN];
        id.copy_from_slice(&header[9..]);
        guard
            .admit(sent_ms, id, now_ms)
            .inspect_err(|_| out.clear())
    }
}

/// The operating system gave no random bytes (or there was no secret to seal with): nothing is
/// sealed or proved without a fresh nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no random bytes from the operating system, or no secret")]
pub struct NoRandom;

/// Fresh random bytes from the operating system.
pub fn random<const N: usize>() -> Result<[u8; N], NoRandom> {
    let mut bytes = [0; N];
    getrandom::fill(&mut bytes).map_err(|err| {
        tracing::error!(%err, "the operating system gave no random bytes");
        NoRandom
    })?;
    Ok(bytes)
}

/// Refuses datagrams sent outside a window around now, and a second datagram with the nonce of
/// one it admitted. Remembers at most `REPLAY_MEMORY` nonces, the oldest by send time
/// forgotten first; whenever it forgets one it refuses everything sent up to that one's time as
/// stale, so a forgotten datagram is refused all the same, even if the clock steps back. The
/// window is around the clock as it reads now: a clock that jumped ahead and was set back
/// hears fresh datagrams again at once. (Datagrams it admitted while ahead, from a peer whose
/// clock was ahead too, leave their send times refused until the clock passes them.)
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    capacity: usize,
    /// The nonces admitted, by send time.
    seen: BTreeSet<(u64, [u8; NONCE_LEN])>,
    nonces: HashSet<[u8; NONCE_LEN]>,
    /// Datagrams sent at or before this are refused.
    floor: u64,
}

impl ReplayGuard {
    /// A guard admitting datagrams sent at most `window_ms` before or after now.
    pub fn new(window_ms: u64) -> ReplayGuard {
        ReplayGuard::with_capacity(window_ms, REPLAY_MEMORY)
    }

    /// A guard remembering at most `capacity` nonces.
    pub fn with_capacity(window_ms: u64, capacity: usize) -> ReplayGuard {
        ReplayGuard {
            window_ms,
            capacity: capacity.max(1),
            seen: BTreeSet::new(),
            nonces: HashSet::new(),
            floor: 0,
        }
    }

    /// Admits a datagram sent at `sent_ms` with `nonce`, received at `now_ms`.
    pub fn admit(
        &mut self,
        sent_ms: u64,
        nonce: [u8; NONCE_LEN],
        now_ms: u64,
    ) -> Result<(), Unopened> {
        let oldest = now_ms.saturating_sub(self.window_ms);
        while let Some(&(sent, _)) = self.seen.first() {
            if sent >= oldest {
                break;
            }
            self.forget_oldest();
        }
        if sent_ms < oldest || sent_ms > now_ms.saturating_add(self.window_ms) {
            return Err(Unopened::Stale);
        }
        if sent_ms <= self.floor {
            return Err(Unopened::Stale);
        }
        if !self.nonces.insert(nonce) {
            return Err(Unopened::Replayed);
        }
        self.seen.insert((sent_ms, nonce));
        if self.seen.len() > self.capacity {
            self.forget_oldest();
        }
        Ok(())
    }

    fn forget_oldest(&mut self) {
        if let Some((sent, nonce)) = self.seen.pop_first() {
            self.nonces.remove(&nonce);
            self.floor = self.floor.max(sent);
        }
    }

    /// Nonces remembered now.
    #[cfg(any(test, feature = "testkit"))]
    pub fn remembered(&self) -> usize {
        self.nonces.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secrets: &[&str]) -> ClusterKeys {
        ClusterKeys::new(secrets.iter().copied(), "c")
    }

    #[test]
    fn the_secret_is_read_from_its_file_or_given_and_a_bad_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        assert!(ClusterKeys::load(None, None, "c").unwrap().is_none());
        let given = Secret::new("from-the-environment-123");
        let loaded = ClusterKeys::load(None, Some(&given), "c").unwrap();
        assert_eq!(loaded.map(|k| k.len()), Some(1));
        let unreadable = ClusterKeys::load(Some(&file), None, "c")
            .unwrap_err()
            .to_string();
        assert!(unreadable.contains("`cluster_secret_file`") && unreadable.contains("cannot read"));
        std::fs::write(&file, "first-secret-0123456789\nshort\n").unwrap();
        let short = ClusterKeys::load(Some(&file), None, "c")
            .unwrap_err()
            .to_string();
        assert!(
            short.contains("`cluster_secret_file`") && short.contains("secret 2"),
            "{short}"
        );
        assert!(!short.contains("first-secret"), "{short}");
        std::fs::write(&file, "first-secret-0123456789\nsecond-secret-0123456789\n").unwrap();
        let loaded = ClusterKeys::load(Some(&file), None, "c").unwrap();
        assert_eq!(loaded.map(|k| k.len()), Some(2));
        let short = Secret::new("short");
        let err = ClusterKeys::load(None, Some(&short), "c")
            .unwrap_err()
            .to_string();
        assert!(err.contains(SECRET_ENV), "{err}");
    }

    const A: &str = "aaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn secrets_are_split_on_whitespace_and_checked_without_quoting_them() {
        assert_eq!(parse_secrets(&format!("{A}\n{B}\n")).unwrap(), [A, B]);
        assert_eq!(parse_secrets(&format!("  {A}  ")).unwrap(), [A]);
        assert!(parse_secrets(" \n").unwrap_err().contains("no secret"));
        let short = parse_secrets(&format!("{A}\nshort")).unwrap_err();
        assert!(
            short.contains("secret 2") && !short.contains("short\""),
            "{short}"
        );
        assert!(parse_secrets(&format!("{A}é")).is_err());
        assert!(parse_secrets(&[A; 9].join("\n"))
            .unwrap_err()
            .contains("more than 8"));
    }

    fn transcript<'a>(hello: &'a [u8], ln: &'a [u8; 32], dn: &'a [u8; 32]) -> Transcript<'a> {
        Transcript {
            hello,
            listener_nonce: ln,
            dialer_nonce: dn,
            version: 1,
            generation: 7,
        }
    }

    #[test]
    fn a_proof_checks_only_with_its_secret_its_role_and_its_transcript() {
        let (ln, dn) = ([1; 32], [2; 32]);
        let t = transcript(b"hello", &ln, &dn);
        let old_new = keys(&[A, B]);
        let proof = keys(&[B]).prove(0, Role::Dialer, &t);
        assert_eq!(old_new.check(Role::Dialer, &t, &proof), Some(1));
        assert_eq!(keys(&[A]).check(Role::Dialer, &t, &proof), None);
        assert_eq!(old_new.check(Role::Listener, &t, &proof), None);
        let other_nonce = [3; 32];
        for changed in [
            transcript(b"hellp", &ln, &dn),
            transcript(b"hello", &other_nonce, &dn),
            transcript(b"hello", &ln, &other_nonce),
            Transcript { version: 2, ..t },
            Transcript { generation: 8, ..t },
        ] {
            let listener = old_new.prove(1, Role::Listener, &t);
            assert!(!old_new.check_with(1, Role::Listener, &changed, &listener));
            if (changed.version, changed.generation) == (t.version, t.generation) {
                assert_eq!(old_new.check(Role::Dialer, &changed, &proof), None);
            }
        }
        assert_eq!(keys(&[]).check(Role::Dialer, &t, &[0; 32]), None);
    }

    #[test]
    fn a_sealed_datagram_opens_once_with_any_of_the_secrets_and_not_when_changed_or_old() {
        let (sealer, opener) = (keys(&[B, A]), keys(&[A, B]));
        let mut sealed = Vec::new();
        sealer.seal(b"gossip", 10_000, &mut sealed).unwrap();
        assert_eq!(sealed.len(), 6 + SEAL_OVERHEAD);
        assert!(!sealed.windows(6).any(|w| w == b"gossip"));
        let mut out = Vec::new();
        let mut guard = ReplayGuard::new(1000);
        assert_eq!(opener.open(&sealed, 10_500, &mut guard, &mut out), Ok(()));
        assert_eq!(out, b"gossip");
        assert_eq!(
            opener.open(&sealed, 10_600, &mut guard, &mut out),
            Err(Unopened::Replayed)
        );
        assert!(out.is_empty());
        let mut fresh = ReplayGuard::new(1000);
        assert_eq!(
            opener.open(&sealed, 11_001, &mut fresh, &mut out),
            Err(Unopened::Stale)
        );
        assert_eq!(
            opener.open(&sealed, 8_999, &mut fresh, &mut out),
            Err(Unopened::Stale)
        );
        assert_eq!(
            keys(&["cccccccccccccccccccc"]).open(&sealed, 10_000, &mut fresh, &mut out),
            Err(Unopened::Unsealed)
        );
        // Another cluster id derives other keys from the same secret.
        assert_eq!(
            ClusterKeys::new([A], "d").open(&sealed, 10_000, &mut fresh, &mut out),
            Err(Unopened::Unsealed)
        );
        for at in 0..sealed.len() {
            let mut changed = sealed.clone();
            changed[at] ^= 0x40;
            assert_eq!(
                opener.open(&changed, 10_000, &mut fresh, &mut out),
                Err(Unopened::Unsealed),
                "byte {at}"
            );
        }
        for len in 0..sealed.len() {
            assert!(opener
                .open(&sealed[..len], 10_000, &mut fresh, &mut out)
                .is_err());
        }
        // None of that was admitted: a guard whose clock did not move on opens it.
        let mut unmoved = ReplayGuard::new(1000);
        assert_eq!(opener.open(&sealed, 10_000, &mut unmoved, &mut out), Ok(()));
    }

    #[test]
    fn the_replay_guard_forgets_old_nonces_and_refuses_what_it_forgot() {
        let mut guard = ReplayGuard::with_capacity(1000, 3);
        for n in 0..3u8 {
            assert_eq!(guard.admit(100 + u64::from(n), [n; 12], 500), Ok(()));
        }
        // A fourth pushes out the oldest (sent at 100): anything sent by then is stale.
        assert_eq!(guard.admit(200, [9; 12], 500), Ok(()));
        assert_eq!(guard.remembered(), 3);
        assert_eq!(guard.admit(100, [0; 12], 500), Err(Unopened::Stale));
        assert_eq!(guard.admit(101, [1; 12], 500), Err(Unopened::Replayed));
        // Past their window they are dropped: memory follows the window.
        assert_eq!(guard.admit(1_500, [7; 12], 1_500), Ok(()));
        assert_eq!(guard.remembered(), 1);
        assert_eq!(guard.admit(1_500, [7; 12], 1_500), Err(Unopened::Replayed));

        // The clock steps back: what was forgotten stays refused.
        let mut guard = ReplayGuard::with_capacity(1000, 100);
        assert_eq!(guard.admit(1_000, [1; 12], 1_000), Ok(()));
        assert_eq!(guard.admit(2_500, [2; 12], 2_500), Ok(()));
        assert_eq!(guard.remembered(), 1);
        assert_eq!(guard.admit(1_000, [1; 12], 1_200), Err(Unopened::Stale));

        // A peer whose clock runs ahead: when memory is full the oldest by send time goes, so
        // the others' datagrams are not made stale.
        let mut guard = ReplayGuard::with_capacity(1000, 2);
        assert_eq!(guard.admit(1_900, [1; 12], 1_000), Ok(()));
        assert_eq!(guard.admit(1_000, [2; 12], 1_000), Ok(()));
        assert_eq!(guard.admit(1_001, [3; 12], 1_000), Ok(()));
        assert_eq!(guard.admit(1_002, [4; 12], 1_000), Ok(()));
        assert_eq!(guard.admit(1_000, [2; 12], 1_000), Err(Unopened::Stale));
    }

    /// The local clock jumps hours ahead (a host that booted fast), then back: while it is
    /// ahead, correct peers' datagrams are stale (the clocks disagree); once it is back, fresh
    /// ones open again at once, and what was admitted before stays refused.
    #[test]
    fn the_replay_guard_hears_again_once_a_clock_that_jumped_ahead_is_set_back() {
        const HOUR: u64 = 3_600_000;
        let t = 10 * HOUR;
        let mut guard = ReplayGuard::new(30_000);
        assert_eq!(guard.admit(t, [1; 12], t), Ok(()));
        assert_eq!(guard.admit(t + 1, [2; 12], t + 1), Ok(()));
        // Three hours ahead: a correct peer's datagram is out of the window.
        assert_eq!(
            guard.admit(t + 2, [3; 12], t + 3 * HOUR),
            Err(Unopened::Stale)
        );
        // Set back, a second later.
        assert_eq!(guard.admit(t + 1_000, [4; 12], t + 1_000), Ok(()));
        assert_eq!(guard.admit(t + 1_001, [5; 12], t + 1_001), Ok(()));
        // Replays stay refused, forgotten or remembered.
        for (sent, nonce) in [(t, 1), (t + 1, 2), (t + 1_000, 4)] {
            assert!(
                guard.admit(sent, [nonce; 12], t + 1_002).is_err(),
                "{nonce}"
            );
        }
    }
}
