//! Identifiers: parse, don't validate.
//!
//! An [`Identifier`] only exists in normalized form: DNS names are lower case ASCII (IDNA
//! names converted to punycode by the `idna` crate, UTS #46 with STD3 rules), without a
//! trailing dot, with at most one wildcard which must be the whole leftmost label, and with a
//! registrable domain under the Public Suffix List (`psl` crate). IP identifiers (RFC 8738)
//! are kept in their canonical text form.

use core::fmt;
use core::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::NameError;

/// The longest DNS name in octets, without the trailing dot (RFC 1035 §2.3.4).
pub const NAME_LEN_MAX: usize = 253;
/// The longest DNS label in octets (RFC 1035 §2.3.4).
pub const LABEL_LEN_MAX: usize = 63;

/// A normalized DNS name, possibly a wildcard (`*.example.com`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DnsName(String);

/// What a certificate is for: a DNS name or an IP address (RFC 8555 §9.7.7, RFC 8738).
///
/// Ordering puts DNS names before IP addresses, then orders by text; a certificate's identifier
/// list is kept sorted in this order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Identifier {
    /// A DNS name (ACME identifier type `dns`).
    Dns(DnsName),
    /// An IP address (ACME identifier type `ip`, RFC 8738).
    Ip(IpAddr),
}

impl DnsName {
    /// Parses and normalizes a DNS name, naming the problem on failure.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let trimmed = input.trim();
        let err = |reason: &'static str| NameError {
            input: truncate(input),
            reason,
        };
        if trimmed.is_empty() {
            return Err(err("is empty"));
        }
        let undotted = trimmed.strip_suffix('.').unwrap_or(trimmed);
        let (wildcard, base) = match undotted.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, undotted),
        };
        if base.contains('*') {
            return Err(err("has a wildcard that is not the whole leftmost label"));
        }
        if base.is_empty() {
            return Err(err("has no name after the wildcard"));
        }
        if base.chars().any(char::is_whitespace) {
            return Err(err("contains whitespace"));
        }
        let ascii = idna::domain_to_ascii_strict(base)
            .map_err(|_| err("is not a valid (internationalized) DNS name"))?;
        let labels: Vec<&str> = ascii.split('.').collect();
        if labels.len() < 2 {
            return Err(err(
                "is a single label; a public certificate needs a registrable domain",
            ));
        }
        for label in &labels {
            if label.is_empty() {
                return Err(err("has an empty label"));
            }
            if label.len() > LABEL_LEN_MAX {
                return Err(err("has a label longer than 63 octets"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(err("has a character outside letters, digits and hyphen"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(err("has a label that starts or ends with a hyphen"));
            }
        }
        // A name whose last label is all digits is an IP address in disguise or unroutable.
        if labels
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(err("ends in an all-numeric label"));
        }
        let full_len = ascii.len() + if wildcard { 2 } else { 0 };
        if full_len > NAME_LEN_MAX {
            return Err(err("is longer than 253 octets"));
        }
        match psl::domain_str(&ascii) {
            Some(_) => {}
            None if wildcard => return Err(err("is a wildcard directly under a public suffix")),
            None => return Err(err("is a public suffix, not a registrable domain")),
        }
        let mut name = String::with_capacity(full_len);
        if wildcard {
            name.push_str("*.");
        }
        name.push_str(&ascii);
        Ok(Self(name))
    }

    /// The normalized name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the name is a wildcard (`*.example.com`).
    #[must_use]
    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }

    /// The name without a leading wildcard label.
    #[must_use]
    pub fn base(&self) -> &str {
        self.0.strip_prefix("*.").unwrap_or(&self.0)
    }

    /// The registrable domain under the Public Suffix List (for per-domain rate budgets).
    #[must_use]
    pub fn registered_domain(&self) -> &str {
        // Every parsed name passed the same lookup in `parse`; a name decoded from bytes is
        // re-parsed before use (`Identifier::is_normalized`), so the fallback is only defensive.
        psl::domain_str(self.base()).unwrap_or_else(|| self.base())
    }
}

impl Identifier {
    /// Parses an identifier: an IP address (`192.0.2.1`, `2001:db8::1`, `[2001:db8::1]`) or a
    /// DNS name.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let trimmed = input.trim();
        let unbracketed = trimmed
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(trimmed);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        if unbracketed.contains(':') {
            return Err(NameError {
                input: truncate(input),
                reason: "is not a valid IP address",
            });
        }
        DnsName::parse(trimmed).map(Self::Dns)
    }

    /// The ACME identifier value (RFC 8555 §9.7.7): the name, or the address in text form.
    #[must_use]
    pub fn value(&self) -> String {
        match self {
            Self::Dns(name) => name.as_str().to_owned(),
            Self::Ip(ip) => ip.to_string(),
        }
    }

    /// The key under which this identifier counts against per-domain budgets.
    #[must_use]
    pub fn budget_domain(&self) -> String {
        match self {
            Self::Dns(name) => name.registered_domain().to_owned(),
            Self::Ip(ip) => ip.to_string(),
        }
    }

    /// Whether this value is exactly what [`Identifier::parse`] makes of its own text; used to
    /// re-check identifiers decoded from untrusted bytes.
    #[must_use]
    pub fn is_normalized(&self) -> bool {
        match self {
            Self::Dns(name) => DnsName::parse(name.as_str()).as_ref() == Ok(name),
            Self::Ip(_) => true,
        }
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => name.fmt(f),
            Self::Ip(ip) => ip.fmt(f),
        }
    }
}

/// Error messages quote the offending input, but never more than a screenful of it.
fn truncate(input: &str) -> String {
    const QUOTE_MAX: usize = 80;
    if input.len() <= QUOTE_MAX {
        return input.to_owned();
    }
    let mut end = QUOTE_MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &input[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(input: &str) -> &'static str {
        Identifier::parse(input).expect_err(input).reason
    }

    #[test]
    fn names_are_normalized_to_lower_case_without_trailing_dot() {
        let id = Identifier::parse(" WWW.Example.COM. ").unwrap();
        assert_eq!(id.to_string(), "www.example.com");
    }

    #[test]
    fn internationalized_names_become_punycode() {
        let id = Identifier::parse("Bücher.example").unwrap();
        assert_eq!(id.to_string(), "xn--bcher-kva.example");
    }

    #[test]
    fn a_leftmost_wildcard_is_accepted_and_kept() {
        let Identifier::Dns(name) = Identifier::parse("*.Example.com").unwrap() else {
            panic!("expected a DNS name");
        };
        assert!(name.is_wildcard());
        assert_eq!(name.base(), "example.com");
        assert_eq!(name.registered_domain(), "example.com");
    }

    #[test]
    fn a_wildcard_anywhere_else_is_rejected() {
        assert_eq!(
            reason("www.*.example.com"),
            "has a wildcard that is not the whole leftmost label"
        );
        assert_eq!(
            reason("w*.example.com"),
            "has a wildcard that is not the whole leftmost label"
        );
        assert_eq!(
            reason("*.*.example.com"),
            "has a wildcard that is not the whole leftmost label"
        );
        assert_eq!(reason("*.."), "has no name after the wildcard");
    }

    #[test]
    fn public_suffixes_are_not_certifiable() {
        assert_eq!(
            reason("com"),
            "is a single label; a public certificate needs a registrable domain"
        );
        assert_eq!(
            reason("co.uk"),
            "is a public suffix, not a registrable domain"
        );
        assert_eq!(
            reason("*.co.uk"),
            "is a wildcard directly under a public suffix"
        );
    }

    #[test]
    fn registered_domain_follows_the_public_suffix_list() {
        let Identifier::Dns(name) = Identifier::parse("a.b.example.co.uk").unwrap() else {
            panic!("expected a DNS name");
        };
        assert_eq!(name.registered_domain(), "example.co.uk");
    }

    #[test]
    fn label_and_name_lengths_are_bounded() {
        let long_label = format!("{}.example.com", "a".repeat(64));
        assert!(Identifier::parse(&long_label).is_err());
        let ok_label = format!("{}.example.com", "a".repeat(63));
        assert!(Identifier::parse(&ok_label).is_ok());
        let long_name = format!("{}example.com", "abcdefghi.".repeat(25));
        assert!(long_name.len() > NAME_LEN_MAX);
        assert!(Identifier::parse(&long_name).is_err());
    }

    #[test]
    fn bad_characters_and_hyphens_are_rejected() {
        assert!(Identifier::parse("under_score.example.com").is_err());
        assert!(Identifier::parse("-lead.example.com").is_err());
        assert!(Identifier::parse("trail-.example.com").is_err());
        assert_eq!(reason("sp ace.example.com"), "contains whitespace");
        assert_eq!(reason(""), "is empty");
        assert_eq!(
            reason("a..example.com"),
            "is not a valid (internationalized) DNS name"
        );
        assert_eq!(reason("example.123"), "ends in an all-numeric label");
    }

    #[test]
    fn ip_addresses_parse_in_canonical_form() {
        assert_eq!(
            Identifier::parse("192.0.2.1").unwrap().to_string(),
            "192.0.2.1"
        );
        assert_eq!(
            Identifier::parse("[2001:DB8::0:1]").unwrap().to_string(),
            "2001:db8::1"
        );
        assert_eq!(reason("2001:db8::g"), "is not a valid IP address");
    }

    #[test]
    fn error_quotes_are_truncated() {
        let input = "ä".repeat(100);
        let err = Identifier::parse(&input).unwrap_err();
        assert!(err.input.len() < input.len());
        assert!(err.input.ends_with('…'));
    }
}
