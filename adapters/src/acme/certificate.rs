//! The issued chain: PEM from the CA (RFC 8555 §7.4.2, `application/pem-certificate-chain`)
//! into the DER, validity and ARI id the core commits.

use certfleet_core::UnixMillis;
use instant_acme::CertificateIdentifier;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::prelude::{ASN1Time, FromDer, X509Certificate};

/// A downloaded certificate, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The leaf, DER.
    pub leaf_der: Vec<u8>,
    /// The intermediates, DER, leaf's issuer first.
    pub chain_der: Vec<Vec<u8>>,
    /// The leaf's `notBefore`.
    pub not_before: UnixMillis,
    /// The leaf's `notAfter`.
    pub not_after: UnixMillis,
    /// RFC 9773 §4.1: base64url(AKI keyIdentifier) '.' base64url(serial DER bytes); `None`
    /// when the leaf has no authority key identifier.
    pub ari_id: Option<String>,
}

/// Parses a PEM chain, leaf first. Untrusted input: every defect is an error, never a panic.
pub fn parse_chain(pem: &[u8]) -> Result<Issued, String> {
    let mut certificates = CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map_err(|e| format!("certificate chain PEM: {e}")))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter();
    let leaf = certificates
        .next()
        .ok_or("certificate chain PEM holds no certificate")?;
    let (rest, parsed) =
        X509Certificate::from_der(&leaf).map_err(|e| format!("leaf certificate: {e}"))?;
    if !rest.is_empty() {
        return Err(format!(
            "leaf certificate has {} trailing bytes",
            rest.len()
        ));
    }
    let validity = parsed.validity();
    let not_before = unix_millis(validity.not_before, "notBefore")?;
    let not_after = unix_millis(validity.not_after, "notAfter")?;
    if not_after <= not_before {
        return Err(format!(
            "leaf certificate expires ({not_after}) before it is valid ({not_before})"
        ));
    }
    let chain_der = certificates
        .map(|c| {
            X509Certificate::from_der(&c).map_err(|e| format!("intermediate certificate: {e}"))?;
            Ok(c.to_vec())
        })
        .collect::<Result<Vec<_>, String>>()?;
    // Only a missing AKI means "no ARI id"; the leaf itself already parsed.
    let ari_id = CertificateIdentifier::try_from(&leaf)
        .ok()
        .map(|id| id.to_string());
    Ok(Issued {
        leaf_der: leaf.to_vec(),
        chain_der,
        not_before,
        not_after,
        ari_id,
    })
}

fn unix_millis(time: ASN1Time, field: &str) -> Result<UnixMillis, String> {
    let seconds = u64::try_from(time.timestamp())
        .map_err(|_| format!("leaf certificate {field} {time} is before 1970"))?;
    Ok(UnixMillis(seconds.saturating_mul(1_000)))
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, Issuer, KeyIdMethod, KeyPair, SerialNumber,
    };

    use super::*;

    /// A CA with key id C0FFEE and a leaf it signed with serial CAFE (instant-acme's own test
    /// vector for the ARI id: "wP_u.AMr-").
    fn chain() -> (String, Vec<u8>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_identifier_method = KeyIdMethod::PreSpecified(vec![0xC0, 0xFF, 0xEE]);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca = Issuer::new(ca_params, ca_key);
        let mut leaf_params = CertificateParams::new(["example.com".to_owned()]).unwrap();
        leaf_params.serial_number = Some(SerialNumber::from_slice(&[0xCA, 0xFE]));
        leaf_params.use_authority_key_identifier_extension = true;
        let leaf = leaf_params
            .signed_by(&KeyPair::generate().unwrap(), &ca)
            .unwrap();
        (
            format!("{}{}", leaf.pem(), ca_cert.pem()),
            ca_cert.der().to_vec(),
        )
    }

    #[test]
    fn a_chain_parses_into_leaf_intermediates_validity_and_ari_id() {
        let (pem, ca_der) = chain();
        let issued = parse_chain(pem.as_bytes()).unwrap();
        assert_eq!(issued.chain_der, [ca_der]);
        assert_eq!(issued.ari_id.as_deref(), Some("wP_u.AMr-"));
        assert!(issued.not_before < issued.not_after);
    }

    #[test]
    fn garbage_chains_are_errors_not_panics() {
        let (pem, _) = chain();
        let truncated = &pem.as_bytes()[..pem.len() / 3];
        for garbage in [
            &b""[..],
            b"hello",
            truncated,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            assert!(parse_chain(garbage).is_err());
        }
    }
}
