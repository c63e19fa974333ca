//! The CA's certificates: a root and an intermediate made from the seed, leaves signed by the
//! intermediate, and CSR checks (RFC 8555 §7.4).
//!
//! Both CA keys are Ed25519, derived from the seed: ring's Ed25519 signatures are deterministic
//! (ECDSA's are not), so every certificate this CA makes is a function of the seed and the
//! requests, which the simulation's determinism check requires (DESIGN §8).

use std::collections::BTreeSet;
use std::net::IpAddr;

use base64::Engine;
use base64::prelude::BASE64_URL_SAFE_NO_PAD;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls::pki_types::PrivatePkcs8KeyDer;
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::config::KeyType;
use crate::rng::sha256;

/// The CA validity: wide and fixed, so that the root depends on the seed only, and covers any
/// clock a test or the simulation (madsim starts around 2022) can have.
const CA_NOT_BEFORE: (i32, u8, u8) = (2000, 1, 1);
const CA_NOT_AFTER: (i32, u8, u8) = (2099, 12, 31);

/// The root, the intermediate, and the intermediate's signing key.
pub(crate) struct Pki {
    pub(crate) root_der: Vec<u8>,
    pub(crate) root_pem: String,
    pub(crate) intermediate_der: Vec<u8>,
    pub(crate) intermediate_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

impl Pki {
    pub(crate) fn new(seed: u64) -> Result<Self, rcgen::Error> {
        let root_key = seeded_ed25519(seed, "root")?;
        let mut root = ca_params(seed, "root")?;
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root_cert = root.self_signed(&root_key)?;
        let root_issuer = Issuer::new(root, root_key);

        let intermediate_key = seeded_ed25519(seed, "intermediate")?;
        let mut intermediate = ca_params(seed, "intermediate")?;
        // Leaves only below the intermediate.
        intermediate.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        intermediate.use_authority_key_identifier_extension = true;
        let intermediate_cert = intermediate.signed_by(&intermediate_key, &root_issuer)?;
        Ok(Self {
            root_der: root_cert.der().to_vec(),
            root_pem: root_cert.pem(),
            intermediate_der: intermediate_cert.der().to_vec(),
            intermediate_pem: intermediate_cert.pem(),
            issuer: Issuer::new(intermediate, intermediate_key),
        })
    }

    /// Signs a leaf for `names` (DNS names, `*.` wildcards, IP addresses) and `key`.
    pub(crate) fn issue(&self, leaf: &LeafRequest<'_>) -> Result<Leaf, String> {
        let mut params = CertificateParams::default();
        params.not_before = datetime(leaf.not_before_ms)?;
        params.not_after = datetime(leaf.not_after_ms)?;
        params.serial_number = Some(SerialNumber::from_slice(&leaf.serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.distinguished_name = DistinguishedName::new();
        // A CN only if it fits (RFC 5280 ub-common-name: 64); rcgen then marks the SAN
        // extension critical, as RFC 5280 §4.2.1.6 asks for an empty subject.
        if let Some(first) = leaf.names.iter().find(|name| name.len() <= 64) {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        for name in leaf.names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.as_str()
                        .try_into()
                        .map_err(|e| format!("name {name:?}: {e}"))?,
                ),
            });
        }
        let cert = params
            .signed_by(leaf.key, &self.issuer)
            .map_err(|e| format!("signing the leaf: {e}"))?;
        let der = cert.der().to_vec();
        let ari_id = ari_id(&der)?;
        Ok(Leaf {
            pem: cert.pem(),
            der,
            ari_id,
        })
    }
}

/// What a leaf is made of.
pub(crate) struct LeafRequest<'a> {
    pub(crate) names: &'a [String],
    pub(crate) key: &'a CsrKey,
    /// Positive, 16 bytes, first byte in 1..=0x7f: DER needs no sign byte, so the serial in
    /// the certificate is exactly these bytes.
    pub(crate) serial: [u8; 16],
    pub(crate) not_before_ms: u64,
    pub(crate) not_after_ms: u64,
}

/// A signed leaf.
pub(crate) struct Leaf {
    pub(crate) der: Vec<u8>,
    pub(crate) pem: String,
    pub(crate) ari_id: String,
}

/// The public key of a CSR, in the form rcgen signs over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CsrKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
    pub(crate) kind: KeyType,
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// A CSR that parsed, whose signature verifies, with a key type we accept.
#[derive(Debug)]
pub(crate) struct Csr {
    /// subjectAltNames and the CN, normalized as order identifiers are.
    pub(crate) names: BTreeSet<String>,
    pub(crate) key: CsrKey,
}

/// Parses and checks a CSR (RFC 8555 §7.4: PKCS#10, DER): its self-signature, its key type,
/// and its names (dNSName and iPAddress SANs; a CN must repeat one of them).
pub(crate) fn parse_csr(der: &[u8], accepted: &BTreeSet<KeyType>) -> Result<Csr, String> {
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| format!("CSR does not parse: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the CSR".to_owned());
    }
    csr.verify_signature()
        .map_err(|e| format!("CSR signature does not verify: {e}"))?;
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let oid = &spki.algorithm.algorithm;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    let (kind, alg): (KeyType, &'static SignatureAlgorithm) = if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY
    {
        match curve {
            Some(c) if c == OID_EC_P256 => (KeyType::EcdsaP256, &rcgen::PKCS_ECDSA_P256_SHA256),
            Some(c) if c == OID_NIST_EC_P384 => {
                (KeyType::EcdsaP384, &rcgen::PKCS_ECDSA_P384_SHA384)
            }
            _ => return Err("CSR key is on an unsupported curve".to_owned()),
        }
    } else if *oid == OID_SIG_ED25519 {
        (KeyType::Ed25519, &rcgen::PKCS_ED25519)
    } else if *oid == OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) if rsa.key_size() >= 2048 => {
                (KeyType::Rsa, &rcgen::PKCS_RSA_SHA256)
            }
            _ => return Err("CSR RSA key is shorter than 2048 bits or unreadable".to_owned()),
        }
    } else {
        return Err(format!("CSR key algorithm {oid} is not supported"));
    };
    if !accepted.contains(&kind) {
        return Err(format!("CSR key type {kind:?} is not accepted here"));
    }
    let mut names = BTreeSet::new();
    for extension in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension {
            for name in &san.general_names {
                names.insert(match name {
                    GeneralName::DNSName(dns) => dns.to_ascii_lowercase(),
                    GeneralName::IPAddress(bytes) => ip_from_bytes(bytes)
                        .ok_or("CSR iPAddress SAN is neither 4 nor 16 bytes")?
                        .to_string(),
                    other => return Err(format!("CSR SAN {other} is not supported")),
                });
            }
        }
    }
    for cn in info.subject.iter_common_name() {
        let cn = cn
            .as_str()
            .map_err(|_| "CSR common name is not a string")?
            .to_ascii_lowercase();
        if !names.contains(&cn) {
            return Err(format!("CSR common name {cn:?} is not among its SANs"));
        }
    }
    Ok(Csr {
        names,
        key: CsrKey {
            raw: spki.subject_public_key.data.to_vec(),
            alg,
            kind,
        },
    })
}

/// The ARI certificate identifier of a certificate we issued (RFC 9773 §4.1):
/// base64url(AKI keyIdentifier) "." base64url(DER serial content).
pub(crate) fn ari_id(der: &[u8]) -> Result<String, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("certificate does not parse: {e}"))?;
    let aki = cert
        .iter_extensions()
        .find_map(|extension| match extension.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
            _ => None,
        })
        .ok_or("certificate has no authority key identifier")?;
    Ok(format!(
        "{}.{}",
        BASE64_URL_SAFE_NO_PAD.encode(aki.0),
        BASE64_URL_SAFE_NO_PAD.encode(cert.tbs_certificate.raw_serial())
    ))
}

pub(crate) fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// An Ed25519 key from the seed. PKCS#8 v1 of an Ed25519 private key (RFC 8410 §7): a fixed
/// prefix, then the 32-byte private key as an OCTET STRING inside the privateKey OCTET STRING
/// (the layout of `ChallengeKeys::Seeded` in the adapters).
fn seeded_ed25519(seed: u64, role: &str) -> Result<KeyPair, rcgen::Error> {
    let mut input = Vec::with_capacity(40);
    input.extend_from_slice(b"certfleet-ca key\0");
    input.extend_from_slice(role.as_bytes());
    input.push(0);
    input.extend_from_slice(&seed.to_be_bytes());
    let private = sha256(&input);
    let mut der = Vec::with_capacity(48);
    der.extend_from_slice(&[
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ]);
    der.extend_from_slice(&private);
    KeyPair::try_from(&PrivatePkcs8KeyDer::from(der.as_slice()))
}

fn ca_params(seed: u64, role: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.not_before = rcgen::date_time_ymd(CA_NOT_BEFORE.0, CA_NOT_BEFORE.1, CA_NOT_BEFORE.2);
    params.not_after = rcgen::date_time_ymd(CA_NOT_AFTER.0, CA_NOT_AFTER.1, CA_NOT_AFTER.2);
    params.distinguished_name = DistinguishedName::new();
    // The seed in the name tells apart the roots of two runs at a glance.
    params.distinguished_name.push(
        DnType::CommonName,
        format!("certfleet test CA {role} {seed:016x}"),
    );
    let serial = sha256(format!("certfleet-ca serial {role} {seed}").as_bytes());
    let mut serial = serial[..16].to_vec();
    serial[0] = (serial[0] & 0x7f).max(1);
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn datetime(ms: u64) -> Result<OffsetDateTime, String> {
    let seconds = i64::try_from(ms / 1000).map_err(|_| format!("time {ms} ms out of range"))?;
    OffsetDateTime::from_unix_timestamp(seconds).map_err(|e| format!("time {ms} ms: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_root_and_intermediate() {
        let (a, b, c) = (
            Pki::new(1).unwrap(),
            Pki::new(1).unwrap(),
            Pki::new(2).unwrap(),
        );
        assert_eq!(a.root_der, b.root_der);
        assert_eq!(a.intermediate_der, b.intermediate_der);
        assert_ne!(a.root_der, c.root_der);
    }

    #[test]
    fn a_csr_from_rcgen_parses_with_its_names_and_key_type() {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["a.example.com".into(), "192.0.2.1".into()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "A.example.com");
        let csr = params.serialize_request(&key).unwrap();
        let all = [KeyType::EcdsaP256].into_iter().collect();
        let parsed = parse_csr(csr.der(), &all).unwrap();
        assert_eq!(
            parsed.names.iter().map(String::as_str).collect::<Vec<_>>(),
            ["192.0.2.1", "a.example.com"]
        );
        assert_eq!(parsed.key.kind, KeyType::EcdsaP256);
        let mut foreign_cn = params.clone();
        foreign_cn.distinguished_name = DistinguishedName::new();
        foreign_cn
            .distinguished_name
            .push(DnType::CommonName, "other.example.com");
        let foreign = foreign_cn.serialize_request(&key).unwrap();
        assert!(
            parse_csr(foreign.der(), &all).is_err(),
            "a CN must repeat a SAN"
        );
        let only_ed = [KeyType::Ed25519].into_iter().collect();
        assert!(parse_csr(csr.der(), &only_ed).is_err());
        let mut tampered = csr.der().to_vec();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(parse_csr(&tampered, &all).is_err());
    }

    #[test]
    fn a_leaf_carries_the_serial_and_its_ari_id_reads_back() {
        let pki = Pki::new(5).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["b.example.com".into()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).unwrap();
        let parsed = parse_csr(csr.der(), &[KeyType::EcdsaP256].into_iter().collect()).unwrap();
        let mut serial = [7u8; 16];
        serial[0] = 0x12;
        let names = vec!["b.example.com".to_owned()];
        let leaf = pki
            .issue(&LeafRequest {
                names: &names,
                key: &parsed.key,
                serial,
                not_before_ms: 1_700_000_000_000,
                not_after_ms: 1_700_000_000_000 + 86_400_000,
            })
            .unwrap();
        let (_, serial_b64) = leaf.ari_id.split_once('.').unwrap();
        assert_eq!(BASE64_URL_SAFE_NO_PAD.decode(serial_b64).unwrap(), serial);
    }
}
