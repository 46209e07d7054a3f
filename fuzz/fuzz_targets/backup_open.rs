//! The backup reader against an attacker who can write the store: whatever manifest and
//! ciphertext it is given, reading never panics, and a backup that opens holds exactly the
//! objects its manifest lists.
//!
//! The first byte picks what the rest of the input is:
//! - 0: a manifest, whose hash is taken as the recorded one (the manifest parser);
//! - 1: a ciphertext for the operator's identity (the age parser and decryption);
//! - 2: a plaintext an attacker encrypted to the public recipient, with a manifest fixed up
//!   to match its hashes but listing the objects of a real backup: it may only open if it
//!   holds exactly those objects.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use resurgo::backup::archive::{self, Sealed};
use serde_json::{Value, json};

struct Keys {
    identity: String,
    original: Sealed,
    objects: Vec<Value>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (identity, recipient) = archive::generate_identity();
        let objects = vec![
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fse-settings", "namespace": "records"}, "data": {"region": "lazio"}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "fse", "namespace": "records"}, "spec": {"ports": [{"port": 8443}]}}),
        ];
        let original = archive::seal(
            "fuzz",
            &["records".to_owned()],
            objects.clone(),
            vec![],
            &[recipient],
        )
        .expect("seal the reference backup");
        let (_, objects) = archive::open(
            Some(&original.manifest_sha256),
            &original.manifest_bytes,
            &original.ciphertext,
            &identity,
        )
        .expect("the reference backup opens");
        Keys { identity, original, objects }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keys = keys();
    match mode % 3 {
        0 => {
            let _ = archive::check_manifest(Some(&archive::sha256_hex(rest)), rest);
        }
        1 => {
            let _ = archive::decrypt(rest, &keys.identity);
        }
        _ => {
            let recipient = keys
                .identity
                .parse::<age::x25519::Identity>()
                .expect("identity")
                .to_public()
                .to_string();
            let Ok(ciphertext) = archive::encrypt_to(rest, &recipient) else {
                return;
            };
            let mut manifest = keys.original.manifest.clone();
            manifest.plaintext_sha256 = archive::sha256_hex(rest);
            manifest.ciphertext_sha256 = archive::sha256_hex(&ciphertext);
            manifest.ciphertext_bytes = ciphertext.len() as u64;
            let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest");
            let recorded = archive::sha256_hex(&manifest_bytes);
            if let Ok((_, objects)) =
                archive::open(Some(&recorded), &manifest_bytes, &ciphertext, &keys.identity)
            {
                assert_eq!(objects, keys.objects, "a forged backup opened with other objects");
            }
        }
    }
});
