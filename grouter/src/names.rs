//! The naming rules of node ids and sites, one copy for the config and the mesh identities.
//!
//! Owns: what a node id, a site and a region may be (length and characters). Sites and
//! regions become DNS labels (redirect hosts, identity URIs), so they are label-shaped.
//!
//! Must never: import anything of this crate; the config and the certificate code both
//! build on it.

/// Longest accepted node id.
pub const NODE_ID_MAX_LEN: usize = 64;
/// Longest accepted site or region: they become DNS labels.
pub const SITE_MAX_LEN: usize = 32;

/// A node id: 1..=64 of `[a-z0-9._-]`. The reason names the value.
pub fn check_node_id(value: &str) -> Result<(), String> {
    check_chars(value, NODE_ID_MAX_LEN, "[a-z0-9._-]", |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
    })
}

/// A site or region: 1..=32 of `[a-z0-9-]`, a DNS label, so not starting or ending with
/// '-'. The reason names the value.
pub fn check_site(value: &str) -> Result<(), String> {
    check_chars(value, SITE_MAX_LEN, "[a-z0-9-]", |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
    })?;
    if value.starts_with('-') || value.ends_with('-') {
        return Err(format!(
            "{value:?} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// Length and charset of a name.
fn check_chars(
    value: &str,
    max_len: usize,
    charset: &str,
    allowed: impl Fn(char) -> bool,
) -> Result<(), String> {
    if value.is_empty() || value.len() > max_len {
        Err(format!("{value:?} must be 1..={max_len} characters long"))
    } else if let Some(c) = value.chars().find(|c| !allowed(*c)) {
        Err(format!(
            "{value:?} contains {c:?}; allowed characters are {charset}"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_and_sites_follow_one_rule() {
        assert!(check_node_id("lon-1.a_b").is_ok());
        assert!(check_node_id(&"n".repeat(64)).is_ok());
        assert!(check_node_id(&"n".repeat(65)).is_err());
        assert!(check_node_id("").is_err());
        let upper = check_node_id("Lon-1").unwrap_err();
        assert!(upper.contains("'L'"), "{upper}");
        assert!(check_site("lon").is_ok());
        assert!(check_site("lon.1").is_err(), "a site is one DNS label");
        assert!(check_site("-lon").unwrap_err().contains("start and end"));
        assert!(check_site(&"s".repeat(33)).is_err());
    }
}
