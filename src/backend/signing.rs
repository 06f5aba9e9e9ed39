//! Signatures on what realtide sends the app's backend, so it can tell
//! realtide's calls from anyone's: `X-Realtide-Signature: t=<unix s>,v1=<hex>`
//! where `<hex>` is HMAC-SHA256 with `--webhook-secret` over `<t>.<body>`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header the signature travels in.
pub const SIGNATURE_HEADER: &str = "X-Realtide-Signature";

/// Signs with one secret.
pub struct Signer {
    key: Vec<u8>,
}

impl Signer {
    pub fn new(secret: &str) -> Signer {
        Signer {
            key: secret.as_bytes().to_vec(),
        }
    }

    /// The header's value for `body` sent at `at` (Unix seconds).
    pub fn sign(&self, at: u64, body: &[u8]) -> String {
        // HMAC takes a key of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(at.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("t={at},v1={}", hex::encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_the_time_and_the_body() {
        // The RFC 4231 construction, checked against `openssl dgst`:
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 'k…k'
        let signer = Signer::new("0123456789abcdef0123456789abcdef");
        let header = signer.sign(1_700_000_000, br#"{"a":1}"#);
        let expected = std::process::Command::new("openssl")
            .args([
                "dgst",
                "-sha256",
                "-hmac",
                "0123456789abcdef0123456789abcdef",
                "-hex",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(br#"1700000000.{"a":1}"#)?;
                child.wait_with_output()
            });
        let Ok(output) = expected else {
            println!("SKIP the signature against openssl: openssl is not installed");
            assert!(header.starts_with("t=1700000000,v1=") && header.len() == 16 + 64);
            return;
        };
        let hex = String::from_utf8_lossy(&output.stdout);
        let hex = hex.trim().rsplit(' ').next().unwrap();
        assert_eq!(header, format!("t=1700000000,v1={hex}"));
    }
}
