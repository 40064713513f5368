//! Bearer-token checks, shared by every endpoint kumo guards with a token (the API server, the node agent's
//! console endpoint).

/// Whether an `Authorization` header value carries `token`. Compared in constant time: the token is the only
/// secret guarding the endpoint.
pub fn matches(authorization: Option<&str>, token: &str) -> bool {
    let Some(h) = authorization else { return false };
    let given = h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")).unwrap_or("");
    !token.is_empty()
        && given.len() == token.len()
        && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn only_the_exact_token_passes() {
        assert!(matches(Some("Bearer s3cret"), "s3cret"));
        assert!(matches(Some("bearer s3cret"), "s3cret"));
        assert!(!matches(Some("Bearer s3cre"), "s3cret"));
        assert!(!matches(Some("Bearer s3cretX"), "s3cret"));
        assert!(!matches(Some("s3cret"), "s3cret"));
        assert!(!matches(None, "s3cret"));
        assert!(!matches(Some("Bearer "), ""), "an empty token guards nothing");
    }
}
