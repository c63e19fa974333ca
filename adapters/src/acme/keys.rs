//! Certificate keys: generated with rcgen on ring, sealed before they leave the adapter
//! (DESIGN §4), opened only to sign a CSR.

use std::sync::Arc;

use certfleet_core::model::{KeyType, SealedBlob};
use certfleet_core::name::Identifier;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, SignatureAlgorithm};
use zeroize::Zeroizing;

use crate::seal::{DataKey, Nonces};

/// Seals and opens certificate keys with the cluster data key.
#[derive(Clone, Debug)]
pub struct KeySealer {
    key: Arc<DataKey>,
    nonces: Arc<Nonces>,
}

impl KeySealer {
    /// Seals with `key`, drawing nonces from this process's `nonces`.
    #[must_use]
    pub fn new(key: Arc<DataKey>, nonces: Arc<Nonces>) -> Self {
        Self { key, nonces }
    }

    /// Seals a PKCS#8 key.
    #[must_use]
    pub fn seal(&self, pkcs8_der: &[u8]) -> SealedBlob {
        self.key.seal(pkcs8_der, self.nonces.next())
    }

    /// Opens a sealed PKCS#8 key.
    pub fn open(&self, blob: &SealedBlob) -> Result<Zeroizing<Vec<u8>>, String> {
        self.key.open(blob).map_err(|e| e.to_string())
    }
}

/// The key types [`generate`] makes. RSA is not among them: ring, our only crypto backend
/// (deterministic under madsim, DESIGN §8), cannot generate RSA keys, and rcgen generates
/// them only on aws-lc-rs.
pub const SUPPORTED: [KeyType; 2] = [KeyType::EcdsaP256, KeyType::EcdsaP384];

fn algorithm(key_type: KeyType) -> Option<&'static SignatureAlgorithm> {
    match key_type {
        KeyType::EcdsaP256 => Some(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::EcdsaP384 => Some(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => None,
    }
}

/// Generates a key of `key_type` and returns it as PKCS#8 DER.
pub fn generate(key_type: KeyType) -> Result<Zeroizing<Vec<u8>>, String> {
    let Some(algorithm) = algorithm(key_type) else {
        return Err(format!(
            "key type {key_type:?} is not supported: ring cannot generate RSA keys \
             (supported: {SUPPORTED:?})"
        ));
    };
    let key = KeyPair::generate_for(algorithm)
        .map_err(|e| format!("generating a {key_type:?} key: {e}"))?;
    Ok(Zeroizing::new(key.serialize_der()))
}

/// A DER CSR for `identifiers` (DNS names and IP addresses as subject alternative names, an
/// empty subject: RFC 8555 §7.4 takes the names from the SANs) signed by `pkcs8_der`.
pub fn csr(pkcs8_der: &[u8], identifiers: &[Identifier]) -> Result<Vec<u8>, String> {
    let key = KeyPair::try_from(pkcs8_der).map_err(|e| format!("certificate key: {e}"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = identifiers
        .iter()
        .map(|identifier| match identifier {
            Identifier::Dns(name) => name
                .as_str()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|e| format!("{name} in the CSR: {e}")),
            Identifier::Ip(ip) => Ok(SanType::IpAddress(*ip)),
        })
        .collect::<Result<_, _>>()?;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("signing the CSR: {e}"))?;
    Ok(csr.der().to_vec())
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::{FromDer, GeneralName, X509CertificationRequest};

    use super::*;

    #[test]
    fn supported_keys_are_generated_sealed_and_sign_a_csr_for_every_identifier() {
        let sealer = KeySealer::new(
            Arc::new(DataKey::new([7; 4], &[7; 32])),
            Arc::new(Nonces::new(1)),
        );
        let identifiers = [
            Identifier::parse("*.example.com").unwrap(),
            Identifier::parse("example.com").unwrap(),
            Identifier::parse("192.0.2.7").unwrap(),
        ];
        for key_type in SUPPORTED {
            let der = generate(key_type).unwrap();
            let blob = sealer.seal(&der);
            assert_eq!(sealer.open(&blob).unwrap(), der);
            let csr = csr(&sealer.open(&blob).unwrap(), &identifiers).unwrap();
            let (_, parsed) = X509CertificationRequest::from_der(&csr).unwrap();
            let names: Vec<String> = parsed
                .requested_extensions()
                .into_iter()
                .flatten()
                .filter_map(|ext| match ext {
                    x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => {
                        Some(san.general_names.iter().map(|n| match n {
                            GeneralName::DNSName(d) => (*d).to_owned(),
                            GeneralName::IPAddress(ip) => format!("{ip:?}"),
                            other => format!("{other:?}"),
                        }))
                    }
                    _ => None,
                })
                .flatten()
                .collect();
            assert_eq!(
                names,
                ["*.example.com", "example.com", "[192, 0, 2, 7]"],
                "{key_type:?}"
            );
        }
    }

    #[test]
    fn rsa_is_refused_by_name() {
        for key_type in [KeyType::Rsa2048, KeyType::Rsa3072, KeyType::Rsa4096] {
            let error = generate(key_type).unwrap_err();
            assert!(
                error.contains(&format!("{key_type:?} is not supported")),
                "{error}"
            );
        }
    }

    #[test]
    fn a_key_that_is_not_pkcs8_is_refused() {
        let error = csr(b"not a key", &[Identifier::parse("example.com").unwrap()]).unwrap_err();
        assert!(error.starts_with("certificate key:"), "{error}");
    }
}
