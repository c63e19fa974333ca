//! PEM export in certbot's layout (`live/<name>/{cert,chain,fullchain,privkey}.pem`).
//!
//! Being written (session 5): see the data-plane issue.
