//! One line for an error and everything that caused it, for logs and RPC status messages.
//!
//! Each error's own message says what failed and leaves the why to its `source()`, so a
//! message printed alone loses the cause; this joins them.

/// The error and its sources on one line, joined by ": ".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("could not start the container")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("could not mount the root")]
    struct Middle(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("no such container")]
    struct Alone;

    #[test]
    fn an_error_without_a_source_is_its_own_message() {
        assert_eq!(error_chain(&Alone), "no such container");
    }

    #[test]
    fn every_source_follows_in_order_after_a_colon() {
        let error = Outer(Middle(std::io::Error::other("disk gone")));
        assert_eq!(
            error_chain(&error),
            "could not start the container: could not mount the root: disk gone"
        );
    }

    #[test]
    fn a_source_repeating_the_text_so_far_is_still_printed() {
        #[derive(Debug, thiserror::Error)]
        #[error("disk gone")]
        struct Repeats(#[source] std::io::Error);
        let error = Repeats(std::io::Error::other("disk gone"));
        assert_eq!(error_chain(&error), "disk gone: disk gone");
    }
}
