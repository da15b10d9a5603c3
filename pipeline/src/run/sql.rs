//! Quoting for the plan pieces that stay SQL text (the join, pass 1's aggregate, the key check,
//! the typed reading of inputs with null strings): a column or category a data engineer names
//! is always an identifier or a literal, never part of a statement's shape. Builds no plans.

/// Quotes an identifier for SQL.
pub(super) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL.
pub(super) fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_cannot_be_closed_by_a_name() {
        assert_eq!(ident("bmi"), "\"bmi\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("O'Brien"), "'O''Brien'");
        assert_eq!(literal(""), "''");
    }
}
