//! The backup format: what is written to the store, and the checks a backup must pass
//! before anything is restored from it. Pure: bytes in, bytes or a refusal out.
//!
//! A backup is two objects under its location, and one more per data dump:
//! - `objects.jsonl.age`: the objects, one JSON document per line, sorted by namespace, kind
//!   and name, encrypted with age to the schedule's X25519 recipients;
//! - `dumps/<namespace>/<name>.age`: what each data-dump Job uploaded, age-encrypted by the
//!   Job itself (the operator never sees the plaintext);
//! - `manifest.json`: in clear, the SHA-256 of every object, of the whole plaintext and of
//!   the ciphertext, and the SHA-256 and size of every dump. The Backup object records the
//!   SHA-256 of this manifest.
//!
//! A restore refuses a backup unless, in this order: the manifest matches the hash the
//! Backup recorded; the ciphertext matches the manifest (catches flipped bytes and
//! truncation before any key is used); it decrypts with the identity (age authenticates every
//! chunk); and every object, and the set of objects, matches the manifest.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Format tag in every manifest.
pub const FORMAT: &str = "resurgo.dev/backup-v1";
/// Name of the manifest under a backup's location.
pub const MANIFEST: &str = "manifest.json";
/// Name of the encrypted objects under a backup's location.
pub const OBJECTS: &str = "objects.jsonl.age";

/// One object of a backup, as listed in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// SHA-256 (hex) of the object's line in the plaintext, without the newline.
    pub sha256: String,
}

/// The content manifest, stored in clear next to the encrypted objects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: String,
    /// The Backup object's name.
    pub backup: String,
    /// The namespaces the backup read.
    pub namespaces: Vec<String>,
    pub entries: Vec<Entry>,
    /// SHA-256 of the whole plaintext.
    pub plaintext_sha256: String,
    /// SHA-256 and size of the encrypted objects as written.
    pub ciphertext_sha256: String,
    pub ciphertext_bytes: u64,
    /// The data dumps, each a file of its own in the store. Absent from backups without
    /// dumps, so manifests written before dumps existed read and hash the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dumps: Vec<DumpEntry>,
}

/// One data dump, as listed in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DumpEntry {
    /// The namespace its Job ran in.
    pub namespace: String,
    /// The dump's name in `spec.dataDumps`.
    pub name: String,
    /// Its key in the store (under the backup's location, without the store's prefix).
    pub key: String,
    /// SHA-256 (hex) of the file as uploaded (age ciphertext).
    pub sha256: String,
    pub bytes: u64,
}

/// The first line of every binary age file.
pub const AGE_HEADER: &str = "age-encryption.org/v1";

/// How much of a dump's beginning [`check_age_header`] needs to see at most: the header
/// holds a stanza per recipient (at most 16) and ends with the `---` MAC line.
pub const AGE_HEADER_LIMIT: usize = 64 * 1024;

/// Why an uploaded data dump is not an age file, in words.
pub fn check_age_header(head: &[u8]) -> Result<(), String> {
    if head.is_empty() {
        return Err("it is empty".into());
    }
    if head.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----") {
        return Err("it is ASCII-armored age (age -a): upload the binary form instead".into());
    }
    let mut lines = head.split(|b| *b == b'\n');
    if lines.next() != Some(AGE_HEADER.as_bytes()) {
        return Err(format!(
            "it does not start with the age header {AGE_HEADER}: it is not age-encrypted (plaintext is refused)"
        ));
    }
    let mut x25519 = 0;
    for line in lines {
        if line.starts_with(b"---") {
            return if x25519 == 0 {
                Err("its age header has no X25519 recipient stanza (encrypted with a passphrase or another kind of key?): encrypt it to the backup's recipients".into())
            } else {
                Ok(())
            };
        }
        if line.starts_with(b"-> X25519 ") {
            x25519 += 1;
        }
    }
    Err("its age header is truncated (no --- line)".into())
}

/// A backup ready to be written.
pub struct Sealed {
    pub manifest: Manifest,
    /// The manifest as written; its SHA-256 is [`Sealed::manifest_sha256`].
    pub manifest_bytes: Vec<u8>,
    pub manifest_sha256: String,
    pub ciphertext: Vec<u8>,
}

/// Why a backup cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("encryption recipient {index} is not an age X25519 public key")]
    Recipient { index: usize },
    #[error("no encryption recipient")]
    NoRecipient,
    #[error("encryption failed: {0}")]
    Encrypt(String),
}

/// Why a stored backup is refused. Every refusal is final for that backup.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("the backup records no manifest hash: it never completed")]
    NoRecordedHash,
    #[error("its manifest does not match the hash the Backup recorded (found {found})")]
    ManifestHash { found: String },
    #[error("its manifest is not readable: {0}")]
    ManifestUnreadable(String),
    #[error(
        "its encrypted objects do not match the manifest ({found_bytes} bytes with SHA-256 {found}, the manifest says {expected_bytes} bytes): altered or truncated"
    )]
    CiphertextHash {
        found: String,
        found_bytes: u64,
        expected_bytes: u64,
    },
    #[error("the identity is not an age X25519 private key")]
    BadIdentity,
    #[error("it does not decrypt with the given identity: {0}")]
    Decrypt(String),
    #[error("its decrypted content does not match the manifest: {0}")]
    Content(String),
    #[error("its data dump {namespace}/{name} is missing from the store ({key})")]
    DumpMissing {
        namespace: String,
        name: String,
        key: String,
    },
    #[error(
        "its data dump {dump} does not match the manifest ({found_bytes} bytes with SHA-256 {found}, the manifest says {expected_bytes} bytes with SHA-256 {expected}): altered or truncated"
    )]
    DumpHash {
        /// `namespace/name (key)`.
        dump: String,
        found: String,
        found_bytes: u64,
        expected: String,
        expected_bytes: u64,
    },
}

/// Checks one stored dump against its manifest entry: `found` is the SHA-256 and size of
/// the object in the store, `None` when it is not there.
pub fn check_dump(entry: &DumpEntry, found: Option<(&str, u64)>) -> Result<(), Refusal> {
    let Some((sha256, bytes)) = found else {
        return Err(Refusal::DumpMissing {
            namespace: entry.namespace.clone(),
            name: entry.name.clone(),
            key: entry.key.clone(),
        });
    };
    if sha256 != entry.sha256 || bytes != entry.bytes {
        return Err(Refusal::DumpHash {
            dump: format!("{}/{} ({})", entry.namespace, entry.name, entry.key),
            found: sha256.to_owned(),
            found_bytes: bytes,
            expected: entry.sha256.clone(),
            expected_bytes: entry.bytes,
        });
    }
    Ok(())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

fn entry_of(object: &Value, line: &[u8]) -> Entry {
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    Entry {
        api_version: text(&object["apiVersion"]),
        kind: text(&object["kind"]),
        namespace: text(&object["metadata"]["namespace"]),
        name: text(&object["metadata"]["name"]),
        sha256: sha256_hex(line),
    }
}

fn sort_key(object: &Value) -> (String, String, String, String) {
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    (
        text(&object["metadata"]["namespace"]),
        text(&object["apiVersion"]),
        text(&object["kind"]),
        text(&object["metadata"]["name"]),
    )
}

/// Serialises, hashes and encrypts `objects` (already cleaned) for `recipients`; `dumps`
/// are the data dumps already in the store, listed in the manifest.
pub fn seal(
    backup: &str,
    namespaces: &[String],
    mut objects: Vec<Value>,
    dumps: Vec<DumpEntry>,
    recipients: &[String],
) -> Result<Sealed, SealError> {
    let parsed = recipients
        .iter()
        .enumerate()
        .map(|(index, text)| {
            text.parse::<age::x25519::Recipient>()
                .map_err(|_| SealError::Recipient { index })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if parsed.is_empty() {
        return Err(SealError::NoRecipient);
    }
    objects.sort_by_key(sort_key);
    let mut plaintext = Vec::new();
    let mut entries = Vec::with_capacity(objects.len());
    for object in &objects {
        let line = serde_json::to_vec(object).expect("a JSON value serialises");
        entries.push(entry_of(object, &line));
        plaintext.extend_from_slice(&line);
        plaintext.push(b'\n');
    }
    let ciphertext = encrypt(&plaintext, &parsed)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        backup: backup.into(),
        namespaces: namespaces.to_vec(),
        entries,
        plaintext_sha256: sha256_hex(&plaintext),
        ciphertext_sha256: sha256_hex(&ciphertext),
        ciphertext_bytes: ciphertext.len() as u64,
        dumps,
    };
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
    Ok(Sealed {
        manifest_sha256: sha256_hex(&manifest_bytes),
        manifest,
        manifest_bytes,
        ciphertext,
    })
}

fn encrypt(plaintext: &[u8], recipients: &[age::x25519::Recipient]) -> Result<Vec<u8>, SealError> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|error| SealError::Encrypt(error.to_string()))?;
    let mut out = Vec::with_capacity(plaintext.len() + 512);
    let mut writer = encryptor
        .wrap_output(&mut out)
        .map_err(|error| SealError::Encrypt(error.to_string()))?;
    writer
        .write_all(plaintext)
        .and_then(|()| writer.finish().map(|_| ()))
        .map_err(|error| SealError::Encrypt(error.to_string()))?;
    Ok(out)
}

/// Encrypts `plaintext` to one recipient; for tests that forge a backup.
pub fn encrypt_to(plaintext: &[u8], recipient: &str) -> Result<Vec<u8>, SealError> {
    let recipient = recipient
        .parse::<age::x25519::Recipient>()
        .map_err(|_| SealError::Recipient { index: 0 })?;
    encrypt(plaintext, &[recipient])
}

/// Decrypts with an identity; the error never contains the identity.
pub fn decrypt(ciphertext: &[u8], identity: &str) -> Result<Vec<u8>, Refusal> {
    let identity = identity
        .trim()
        .parse::<age::x25519::Identity>()
        .map_err(|_| Refusal::BadIdentity)?;
    let decryptor =
        age::Decryptor::new(ciphertext).map_err(|error| Refusal::Decrypt(error.to_string()))?;
    let mut reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|error| Refusal::Decrypt(error.to_string()))?;
    let mut out = Vec::new();
    reader
        .read_to_end(&mut out)
        .map_err(|error| Refusal::Decrypt(error.to_string()))?;
    Ok(out)
}

/// Checks the manifest against the hash the Backup recorded, and reads it.
pub fn check_manifest(recorded: Option<&str>, manifest_bytes: &[u8]) -> Result<Manifest, Refusal> {
    let recorded = recorded.ok_or(Refusal::NoRecordedHash)?;
    let found = sha256_hex(manifest_bytes);
    if found != recorded {
        return Err(Refusal::ManifestHash { found });
    }
    let manifest: Manifest = serde_json::from_slice(manifest_bytes)
        .map_err(|error| Refusal::ManifestUnreadable(error.to_string()))?;
    if manifest.format != FORMAT {
        return Err(Refusal::ManifestUnreadable(format!(
            "unknown format {:?}",
            manifest.format
        )));
    }
    Ok(manifest)
}

/// Checks the ciphertext against the manifest without decrypting.
pub fn check_ciphertext(manifest: &Manifest, ciphertext: &[u8]) -> Result<(), Refusal> {
    let found = sha256_hex(ciphertext);
    if found != manifest.ciphertext_sha256 || ciphertext.len() as u64 != manifest.ciphertext_bytes {
        return Err(Refusal::CiphertextHash {
            found,
            found_bytes: ciphertext.len() as u64,
            expected_bytes: manifest.ciphertext_bytes,
        });
    }
    Ok(())
}

/// Every check, then the objects: the one way to read a backup.
pub fn open(
    recorded_manifest_sha256: Option<&str>,
    manifest_bytes: &[u8],
    ciphertext: &[u8],
    identity: &str,
) -> Result<(Manifest, Vec<Value>), Refusal> {
    let manifest = check_manifest(recorded_manifest_sha256, manifest_bytes)?;
    check_ciphertext(&manifest, ciphertext)?;
    let plaintext = decrypt(ciphertext, identity)?;
    if sha256_hex(&plaintext) != manifest.plaintext_sha256 {
        return Err(Refusal::Content(
            "the plaintext hash differs from the manifest".into(),
        ));
    }
    let mut objects = Vec::with_capacity(manifest.entries.len());
    let lines = plaintext
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty());
    for (index, line) in lines.enumerate() {
        let Some(entry) = manifest.entries.get(index) else {
            return Err(Refusal::Content(format!(
                "object {index} is not in the manifest"
            )));
        };
        let object: Value = serde_json::from_slice(line)
            .map_err(|error| Refusal::Content(format!("object {index} is not JSON: {error}")))?;
        if entry_of(&object, line) != *entry {
            return Err(Refusal::Content(format!(
                "{} {}/{} differs from its manifest entry",
                entry.kind, entry.namespace, entry.name
            )));
        }
        objects.push(object);
    }
    if objects.len() != manifest.entries.len() {
        return Err(Refusal::Content(format!(
            "{} objects where the manifest lists {}",
            objects.len(),
            manifest.entries.len()
        )));
    }
    Ok((manifest, objects))
}

/// A new X25519 identity and its recipient, as text: for tests and `resurgo` users'
/// convenience. The identity is a secret.
pub fn generate_identity() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    (identity.to_string().expose_secret().to_owned(), recipient)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn objects() -> Vec<Value> {
        vec![
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "n"}, "data": {"k": "v"}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a", "namespace": "n"}, "spec": {}}),
        ]
    }

    fn sealed() -> (Sealed, String) {
        let (identity, recipient) = generate_identity();
        let sealed = seal("bk", &["n".into()], objects(), vec![], &[recipient]).unwrap();
        (sealed, identity)
    }

    #[test]
    fn a_sealed_backup_opens_with_its_identity_and_gives_the_objects_back() {
        let (sealed, identity) = sealed();
        let (manifest, restored) = open(
            Some(&sealed.manifest_sha256),
            &sealed.manifest_bytes,
            &sealed.ciphertext,
            &identity,
        )
        .unwrap();
        assert_eq!(manifest.entries.len(), 2);
        let mut expected = objects();
        expected.sort_by_key(sort_key);
        assert_eq!(restored, expected);
        // The plaintext never appears in what is stored.
        let stored = String::from_utf8_lossy(&sealed.ciphertext);
        assert!(!stored.contains("ConfigMap"));
    }

    #[test]
    fn a_flipped_byte_is_refused_before_decryption() {
        let (mut sealed, identity) = sealed();
        let middle = sealed.ciphertext.len() / 2;
        sealed.ciphertext[middle] ^= 1;
        let refusal = open(
            Some(&sealed.manifest_sha256),
            &sealed.manifest_bytes,
            &sealed.ciphertext,
            &identity,
        )
        .unwrap_err();
        assert!(
            matches!(refusal, Refusal::CiphertextHash { .. }),
            "{refusal}"
        );
    }

    #[test]
    fn a_truncated_backup_is_refused() {
        let (mut sealed, identity) = sealed();
        sealed.ciphertext.truncate(sealed.ciphertext.len() - 10);
        let refusal = open(
            Some(&sealed.manifest_sha256),
            &sealed.manifest_bytes,
            &sealed.ciphertext,
            &identity,
        )
        .unwrap_err();
        assert!(
            matches!(refusal, Refusal::CiphertextHash { .. }),
            "{refusal}"
        );
    }

    #[test]
    fn a_rewritten_manifest_is_refused_against_the_recorded_hash() {
        let (sealed, identity) = sealed();
        // An attacker re-encrypts other content to the public recipient and writes a
        // matching manifest: the hash the Backup recorded no longer matches.
        let (_, recipient) = generate_identity();
        let forged = seal("bk", &["n".into()], vec![], vec![], &[recipient]).unwrap();
        let refusal = open(
            Some(&sealed.manifest_sha256),
            &forged.manifest_bytes,
            &forged.ciphertext,
            &identity,
        )
        .unwrap_err();
        assert!(matches!(refusal, Refusal::ManifestHash { .. }), "{refusal}");
    }

    #[test]
    fn another_key_does_not_decrypt_and_says_so_without_the_key() {
        let (sealed, _) = sealed();
        let (other, _) = generate_identity();
        let refusal = open(
            Some(&sealed.manifest_sha256),
            &sealed.manifest_bytes,
            &sealed.ciphertext,
            &other,
        )
        .unwrap_err();
        assert!(matches!(refusal, Refusal::Decrypt(_)), "{refusal}");
        assert!(!refusal.to_string().contains(&other));
        assert_eq!(
            decrypt(&sealed.ciphertext, "AGE-SECRET-KEY-nonsense"),
            Err(Refusal::BadIdentity)
        );
    }

    #[test]
    fn a_dropped_object_is_refused_even_with_matching_outer_hashes() {
        let (sealed, identity) = sealed();
        // Someone holding the identity drops a line, re-encrypts and fixes the ciphertext
        // hash in the manifest: the entries and the plaintext hash still catch it.
        let plaintext = decrypt(&sealed.ciphertext, &identity).unwrap();
        let first_line = plaintext.iter().position(|b| *b == b'\n').unwrap();
        let recipient = identity
            .parse::<age::x25519::Identity>()
            .unwrap()
            .to_public()
            .to_string();
        let ciphertext = encrypt_to(&plaintext[first_line + 1..], &recipient).unwrap();
        let mut manifest = sealed.manifest.clone();
        manifest.ciphertext_sha256 = sha256_hex(&ciphertext);
        manifest.ciphertext_bytes = ciphertext.len() as u64;
        let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
        let refusal = open(
            Some(&sha256_hex(&manifest_bytes)),
            &manifest_bytes,
            &ciphertext,
            &identity,
        )
        .unwrap_err();
        assert!(matches!(refusal, Refusal::Content(_)), "{refusal}");
    }

    #[test]
    fn a_private_key_is_not_a_recipient() {
        let (identity, _) = generate_identity();
        assert_eq!(
            seal("bk", &[], vec![], vec![], &[identity]).err(),
            Some(SealError::Recipient { index: 0 })
        );
    }

    #[test]
    fn a_manifest_written_before_dumps_existed_reads_and_hashes_the_same() {
        // A manifest as this operator wrote it before data dumps: no `dumps` field.
        let old = r#"{
  "format": "resurgo.dev/backup-v1",
  "backup": "bk",
  "namespaces": [
    "n"
  ],
  "entries": [],
  "plaintextSha256": "p",
  "ciphertextSha256": "c",
  "ciphertextBytes": 3
}"#;
        let manifest = check_manifest(Some(&sha256_hex(old.as_bytes())), old.as_bytes()).unwrap();
        assert!(manifest.dumps.is_empty());
        // Written again, it is the same bytes, so the same hash as the Backup recorded.
        assert_eq!(serde_json::to_string_pretty(&manifest).unwrap(), old);
    }

    #[test]
    fn dumps_are_listed_in_the_manifest_and_checked_against_the_store() {
        let (_, recipient) = generate_identity();
        let dump = DumpEntry {
            namespace: "db".into(),
            name: "pg".into(),
            key: "backups/bk/dumps/db/pg.age".into(),
            sha256: sha256_hex(b"dump"),
            bytes: 4,
        };
        let sealed = seal(
            "bk",
            &["n".into()],
            objects(),
            vec![dump.clone()],
            &[recipient],
        )
        .unwrap();
        let manifest =
            check_manifest(Some(&sealed.manifest_sha256), &sealed.manifest_bytes).unwrap();
        assert_eq!(manifest.dumps, std::slice::from_ref(&dump));
        let sha = sha256_hex(b"dump");
        assert_eq!(check_dump(&dump, Some((&sha, 4))), Ok(()));
        let missing = check_dump(&dump, None).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "its data dump db/pg is missing from the store (backups/bk/dumps/db/pg.age)"
        );
        let other = sha256_hex(b"dumq");
        let altered = check_dump(&dump, Some((&other, 4))).unwrap_err();
        assert!(matches!(altered, Refusal::DumpHash { .. }), "{altered}");
        assert!(altered.to_string().contains("altered or truncated"));
        assert!(check_dump(&dump, Some((&sha, 5))).is_err());
    }

    #[test]
    fn only_age_files_to_x25519_recipients_pass_as_dumps() {
        let (_, recipient) = generate_identity();
        let encrypted = encrypt_to(b"pg_dump output", &recipient).unwrap();
        assert_eq!(check_age_header(&encrypted), Ok(()));
        let plaintext = check_age_header(b"-- PostgreSQL database dump\n").unwrap_err();
        assert!(plaintext.contains("plaintext is refused"), "{plaintext}");
        assert!(check_age_header(b"").unwrap_err().contains("empty"));
        let armored = check_age_header(b"-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n").unwrap_err();
        assert!(armored.contains("armored"), "{armored}");
        let scrypt =
            check_age_header(b"age-encryption.org/v1\n-> scrypt c2FsdA 18\nYm9keQ\n--- bWFj\n\x00")
                .unwrap_err();
        assert!(scrypt.contains("no X25519 recipient"), "{scrypt}");
        let truncated = check_age_header(&encrypted[..30]).unwrap_err();
        assert!(truncated.contains("truncated"), "{truncated}");
    }
}
