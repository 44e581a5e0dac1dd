//! A compact text syntax for query conditions, used by the CLI's `--where`:
//!
//! ```text
//! version >= 1.2.0 and region == "eu"
//! (load < 10 or gpu == true) and not zone in ["z1", "z2"]
//! tags contains "ssd" and /limits/rps > 100 and load < /limits/max_load
//! ```
//!
//! Grammar (keywords are lower case; whitespace separates tokens and is otherwise ignored):
//!
//! ```text
//! where      = or-expr
//! or-expr    = and-expr *( ("or" | "||") and-expr )
//! and-expr   = not-expr *( ("and" | "&&") not-expr )
//! not-expr   = ("not" | "!") not-expr | "(" or-expr ")" | condition
//! condition  = path ( "==" | "!=" | "<" | "<=" | ">" | ">=" ) operand
//!            | path [ "not" ] "in" list
//!            | path [ "not" ] "contains" value
//! operand    = value | pointer                     ; a pointer compares with another key
//! path       = key | pointer
//! key        = [A-Za-z_] *[A-Za-z0-9_.-]            ; a top-level key, except the keywords
//! pointer    = 1*( "/" *segment-char )             ; a JSON Pointer (~0 and ~1 escapes)
//! value      = string | number | version | "true" | "false" | "null" | list
//! string     = '"' ... '"' | "'" ... "'"           ; JSON escapes (\" \\ \n \t \uXXXX)
//! number     = an integer (-12) or a float (1.5, 2e3)
//! version    = a SemVer version written bare (1.2.0, 2.0.0-rc.1): sent as a string, which
//!              the server compares by SemVer precedence when the key is version-typed
//! list       = "[" [ value *( "," value ) ] "]"
//! ```
//!
//! `and` binds tighter than `or`; `not x` is `{"op":"$nor","with":[x]}`; `!=`, `not in` and
//! `not contains` are `$ne`, `$nin` and `$ncontains` (which, like MongoDB, also match clients
//! without the key). Strings must be quoted, so a bare word is always a key. A parse error
//! says what was expected and points at the column.

use std::fmt;

use serde_json::{Number, Value};

use crate::metadata::is_semver;
use crate::query::{Condition, Op, Operand, to_pointer};

/// Why a `--where` expression did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhereError {
    pub message: String,
    /// 1-based, in characters.
    pub column: usize,
    pub input: String,
}

impl fmt::Display for WhereError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} at column {}", self.message, self.column)?;
        writeln!(f, "  {}", self.input)?;
        write!(f, "  {}^", " ".repeat(self.column.saturating_sub(1)))
    }
}

impl std::error::Error for WhereError {}

/// Parses an expression into the conditions of a query's `ops` (a top-level `and` becomes
/// several elements).
pub fn parse(input: &str) -> Result<Vec<Condition>, WhereError> {
    let tokens = lex(input)?;
    let mut parser = Parser {
        input,
        tokens,
        at: 0,
    };
    let condition = parser.or_expr()?;
    if let Some(token) = parser.peek() {
        return Err(parser.error_at(
            token.column,
            format!(
                "expected `and`, `or` or the end, found {}",
                token.kind.describe()
            ),
        ));
    }
    Ok(match condition {
        Condition::And(all) => all,
        other => vec![other],
    })
}

// === lexer ===

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Cmp(Op),
    And,
    Or,
    Not,
    In,
    Contains,
    Key(String),
    Pointer(String),
    Value(Value),
}

impl Kind {
    fn describe(&self) -> String {
        match self {
            Kind::LParen => "`(`".into(),
            Kind::RParen => "`)`".into(),
            Kind::LBracket => "`[`".into(),
            Kind::RBracket => "`]`".into(),
            Kind::Comma => "`,`".into(),
            Kind::Cmp(op) => format!("`{}`", cmp_text(*op)),
            Kind::And => "`and`".into(),
            Kind::Or => "`or`".into(),
            Kind::Not => "`not`".into(),
            Kind::In => "`in`".into(),
            Kind::Contains => "`contains`".into(),
            Kind::Key(k) => format!("key `{k}`"),
            Kind::Pointer(p) => format!("path `{p}`"),
            Kind::Value(v) => format!("value {v}"),
        }
    }
}

fn cmp_text(op: Op) -> &'static str {
    match op {
        Op::Eq => "==",
        Op::Ne => "!=",
        Op::Lt => "<",
        Op::Lte => "<=",
        Op::Gt => ">",
        Op::Gte => ">=",
        _ => "?",
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    column: usize,
}

fn is_segment_char(c: char) -> bool {
    !c.is_whitespace() && !"/()[],=!<>\"'&|".contains(c)
}

fn lex(input: &str) -> Result<Vec<Token>, WhereError> {
    let chars: Vec<char> = input.chars().collect();
    let error = |column: usize, message: String| WhereError {
        message,
        column,
        input: input.to_owned(),
    };
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        let next = chars.get(i + 1).copied();
        let push = |kind: Kind, len: usize, tokens: &mut Vec<Token>| {
            tokens.push(Token { kind, column });
            len
        };
        let consumed = match c {
            c if c.is_whitespace() => 1,
            '(' => push(Kind::LParen, 1, &mut tokens),
            ')' => push(Kind::RParen, 1, &mut tokens),
            '[' => push(Kind::LBracket, 1, &mut tokens),
            ']' => push(Kind::RBracket, 1, &mut tokens),
            ',' => push(Kind::Comma, 1, &mut tokens),
            '=' if next == Some('=') => push(Kind::Cmp(Op::Eq), 2, &mut tokens),
            '=' => return Err(error(column, "`=` is not an operator: write `==`".into())),
            '!' if next == Some('=') => push(Kind::Cmp(Op::Ne), 2, &mut tokens),
            '!' => push(Kind::Not, 1, &mut tokens),
            '<' if next == Some('=') => push(Kind::Cmp(Op::Lte), 2, &mut tokens),
            '<' => push(Kind::Cmp(Op::Lt), 1, &mut tokens),
            '>' if next == Some('=') => push(Kind::Cmp(Op::Gte), 2, &mut tokens),
            '>' => push(Kind::Cmp(Op::Gt), 1, &mut tokens),
            '&' if next == Some('&') => push(Kind::And, 2, &mut tokens),
            '|' if next == Some('|') => push(Kind::Or, 2, &mut tokens),
            '&' | '|' => {
                return Err(error(
                    column,
                    format!("`{c}` is not an operator: write `{c}{c}`"),
                ));
            }
            '"' | '\'' => {
                let (text, len) = lex_string(&chars[i..])
                    .map_err(|(offset, message)| error(column + offset, message))?;
                push(Kind::Value(Value::String(text)), len, &mut tokens)
            }
            '/' => {
                let mut end = i;
                while end < chars.len() && (chars[end] == '/' || is_segment_char(chars[end])) {
                    end += 1;
                }
                let pointer: String = chars[i..end].iter().collect();
                if let Some(bad) = bad_escape(&pointer) {
                    return Err(error(
                        column + bad,
                        "`~` in a path must be followed by 0 or 1 (`~0` is `~`, `~1` is `/`)"
                            .into(),
                    ));
                }
                push(Kind::Pointer(pointer), end - i, &mut tokens)
            }
            c if c.is_ascii_digit() || (c == '-' && next.is_some_and(|n| n.is_ascii_digit())) => {
                let mut end = i + 1;
                while end < chars.len()
                    && (chars[end].is_ascii_alphanumeric() || ".+-_".contains(chars[end]))
                {
                    end += 1;
                }
                let text: String = chars[i..end].iter().collect();
                let value = number_or_version(&text).ok_or_else(|| {
                    error(
                        column,
                        format!("`{text}` is not a number or a SemVer version"),
                    )
                })?;
                push(Kind::Value(value), end - i, &mut tokens)
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = i + 1;
                while end < chars.len()
                    && (chars[end].is_ascii_alphanumeric() || "_.-".contains(chars[end]))
                {
                    end += 1;
                }
                let word: String = chars[i..end].iter().collect();
                let kind = match word.as_str() {
                    "and" => Kind::And,
                    "or" => Kind::Or,
                    "not" => Kind::Not,
                    "in" => Kind::In,
                    "contains" => Kind::Contains,
                    "true" => Kind::Value(Value::Bool(true)),
                    "false" => Kind::Value(Value::Bool(false)),
                    "null" => Kind::Value(Value::Null),
                    _ => Kind::Key(word),
                };
                push(kind, end - i, &mut tokens)
            }
            other => return Err(error(column, format!("unexpected character `{other}`"))),
        };
        i += consumed;
    }
    Ok(tokens)
}

/// The offset of the first `~` not followed by `0` or `1`.
fn bad_escape(pointer: &str) -> Option<usize> {
    let chars: Vec<char> = pointer.chars().collect();
    (0..chars.len()).find(|&i| chars[i] == '~' && !matches!(chars.get(i + 1), Some('0' | '1')))
}

/// A quoted string starting at `chars[0]`; returns the text and the characters consumed, or
/// the offset and message of an error.
fn lex_string(chars: &[char]) -> Result<(String, usize), (usize, String)> {
    let quote = chars[0];
    let mut out = String::new();
    let mut i = 1;
    while i < chars.len() {
        match chars[i] {
            c if c == quote => return Ok((out, i + 1)),
            '\\' => {
                let escaped = chars.get(i + 1).copied();
                match escaped {
                    Some('"') => out.push('"'),
                    Some('\'') => out.push('\''),
                    Some('\\') => out.push('\\'),
                    Some('/') => out.push('/'),
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some('u') => {
                        let hex: String =
                            chars.get(i + 2..i + 6).unwrap_or_default().iter().collect();
                        let c = u32::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|_| hex.len() == 4)
                            .and_then(char::from_u32)
                            .ok_or((i, "`\\u` needs four hex digits of a character".to_owned()))?;
                        out.push(c);
                        i += 4;
                    }
                    _ => return Err((i, "unknown escape in a string".to_owned())),
                }
                i += 2;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Err((0, "unterminated string".to_owned()))
}

fn number_or_version(text: &str) -> Option<Value> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return Some(Value::from(i));
        }
        if let Ok(u) = text.parse::<u64>() {
            return Some(Value::from(u));
        }
        return None;
    }
    if is_semver(text) {
        return Some(Value::String(text.to_owned()));
    }
    // A JSON-style float: digits, one optional fraction, an optional exponent.
    let looks_like_float = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && digits.starts_with(|c: char| c.is_ascii_digit());
    if looks_like_float {
        let f: f64 = text.parse().ok()?;
        return Number::from_f64(f).map(Value::Number);
    }
    None
}

// === parser ===

struct Parser<'a> {
    input: &'a str,
    tokens: Vec<Token>,
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn end_column(&self) -> usize {
        self.input.chars().count() + 1
    }

    fn error_at(&self, column: usize, message: String) -> WhereError {
        WhereError {
            message,
            column,
            input: self.input.to_owned(),
        }
    }

    /// An error about the next token (or the end): "expected X, found Y".
    fn expected(&self, what: &str) -> WhereError {
        match self.peek() {
            Some(token) => self.error_at(
                token.column,
                format!("expected {what}, found {}", token.kind.describe()),
            ),
            None => self.error_at(self.end_column(), format!("expected {what}, found the end")),
        }
    }

    fn eat(&mut self, kind: &Kind) -> bool {
        if self.peek().is_some_and(|t| &t.kind == kind) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn or_expr(&mut self) -> Result<Condition, WhereError> {
        let mut all = vec![self.and_expr()?];
        while self.eat(&Kind::Or) {
            all.push(self.and_expr()?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            flatten(all, true)
        })
    }

    fn and_expr(&mut self) -> Result<Condition, WhereError> {
        let mut all = vec![self.not_expr()?];
        while self.eat(&Kind::And) {
            all.push(self.not_expr()?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            flatten(all, false)
        })
    }

    fn not_expr(&mut self) -> Result<Condition, WhereError> {
        if self.eat(&Kind::Not) {
            return Ok(Condition::not(self.not_expr()?));
        }
        if self.eat(&Kind::LParen) {
            let inner = self.or_expr()?;
            if !self.eat(&Kind::RParen) {
                return Err(self.expected("`)`"));
            }
            return Ok(inner);
        }
        self.condition()
    }

    fn condition(&mut self) -> Result<Condition, WhereError> {
        let path = match self.peek().map(|t| &t.kind) {
            Some(Kind::Key(key)) => to_pointer(key),
            Some(Kind::Pointer(pointer)) => pointer.clone(),
            _ => return Err(self.expected("a key, a /path, `not` or `(`")),
        };
        self.at += 1;
        let after_path = "an operator (==, !=, <, <=, >, >=, in, not in, contains, not contains)";
        let negated = self.eat(&Kind::Not);
        let Some(token) = self.next() else {
            self.at -= 1;
            return Err(self.expected(after_path));
        };
        let op = match (&token.kind, negated) {
            (Kind::Cmp(op), false) => *op,
            (Kind::In, false) => Op::In,
            (Kind::In, true) => Op::Nin,
            (Kind::Contains, false) => Op::Contains,
            (Kind::Contains, true) => Op::NContains,
            (_, true) => {
                self.at -= 1;
                return Err(self.expected("`in` or `contains` after `not`"));
            }
            _ => {
                self.at -= 1;
                return Err(self.expected(after_path));
            }
        };
        let to = match op {
            Op::In | Op::Nin => {
                if self.peek().map(|t| &t.kind) != Some(&Kind::LBracket) {
                    return Err(self.expected("a list `[...]`"));
                }
                Operand::Value(self.value()?)
            }
            _ => match self.peek().map(|t| t.kind.clone()) {
                Some(Kind::Pointer(other)) if !matches!(op, Op::Contains | Op::NContains) => {
                    self.at += 1;
                    Operand::Path {
                        path: other,
                        default: Value::Null,
                    }
                }
                _ => Operand::Value(self.value()?),
            },
        };
        Ok(Condition::Compare { path, op, to })
    }

    fn value(&mut self) -> Result<Value, WhereError> {
        match self.peek().map(|t| t.kind.clone()) {
            Some(Kind::Value(value)) => {
                self.at += 1;
                Ok(value)
            }
            Some(Kind::LBracket) => {
                self.at += 1;
                let mut items = Vec::new();
                if self.eat(&Kind::RBracket) {
                    return Ok(Value::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    if self.eat(&Kind::RBracket) {
                        return Ok(Value::Array(items));
                    }
                    if !self.eat(&Kind::Comma) {
                        return Err(self.expected("`,` or `]`"));
                    }
                }
            }
            Some(Kind::Key(word)) => {
                let column = self.peek().map_or(0, |t| t.column);
                Err(self.error_at(
                    column,
                    format!(
                        "expected a value, found the bare word `{word}` (quote strings: \"{word}\")"
                    ),
                ))
            }
            _ => Err(self.expected(
                "a value (a \"string\", a number, a version, true, false, null or a list)",
            )),
        }
    }
}

/// Joins conditions under one `$and` (or `$or`), lifting nested ones of the same kind that the
/// parser produced from parentheses.
fn flatten(all: Vec<Condition>, or: bool) -> Condition {
    let mut out = Vec::with_capacity(all.len());
    for condition in all {
        match (condition, or) {
            (Condition::Or(inner), true) | (Condition::And(inner), false) => out.extend(inner),
            (other, _) => out.push(other),
        }
    }
    if or {
        Condition::Or(out)
    } else {
        Condition::And(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ops(input: &str) -> Value {
        Value::Array(
            parse(input)
                .unwrap()
                .iter()
                .map(Condition::to_json)
                .collect(),
        )
    }

    fn cmp(path: &str, op: &str, value: Value) -> Value {
        json!({"path": path, "op": op, "to": {"value": value}})
    }

    #[test]
    fn a_top_level_and_becomes_several_ops() {
        assert_eq!(
            ops(r#"version>=1.2.0 and region=="eu""#),
            json!([
                cmp("/version", "$gte", json!("1.2.0")),
                cmp("/region", "$eq", json!("eu"))
            ])
        );
    }

    #[test]
    fn and_binds_tighter_than_or_and_parentheses_regroup() {
        assert_eq!(
            ops("a == 1 or b == 2 and c == 3"),
            json!([{"op": "$or", "with": [
                cmp("/a", "$eq", json!(1)),
                {"op": "$and", "with": [cmp("/b", "$eq", json!(2)), cmp("/c", "$eq", json!(3))]},
            ]}])
        );
        assert_eq!(
            ops("(a == 1 || b == 2) && c == 3"),
            json!([
                {"op": "$or", "with": [cmp("/a", "$eq", json!(1)), cmp("/b", "$eq", json!(2))]},
                cmp("/c", "$eq", json!(3)),
            ])
        );
        assert_eq!(
            ops("a == 1 or (b == 2 or c == 3)"),
            json!([{"op": "$or", "with": [
                cmp("/a", "$eq", json!(1)), cmp("/b", "$eq", json!(2)), cmp("/c", "$eq", json!(3)),
            ]}])
        );
    }

    #[test]
    fn every_operator_and_literal_type_is_understood() {
        assert_eq!(
            ops(concat!(
                "a != 'x' and b < -3 and c <= 2.5 and d > 1e3 and e >= 18446744073709551615 ",
                "and f == true and g == false and h == null and i in [1, \"two\", 3.0, [], 1.0.0-rc.1] ",
                "and j not in [] and k contains \"gpu\" and l not contains 7"
            )),
            json!([
                cmp("/a", "$ne", json!("x")),
                cmp("/b", "$lt", json!(-3)),
                cmp("/c", "$lte", json!(2.5)),
                cmp("/d", "$gt", json!(1000.0)),
                cmp("/e", "$gte", json!(18446744073709551615u64)),
                cmp("/f", "$eq", json!(true)),
                cmp("/g", "$eq", json!(false)),
                cmp("/h", "$eq", json!(null)),
                cmp("/i", "$in", json!([1, "two", 3.0, [], "1.0.0-rc.1"])),
                cmp("/j", "$nin", json!([])),
                cmp("/k", "$contains", json!("gpu")),
                cmp("/l", "$ncontains", json!(7)),
            ])
        );
    }

    #[test]
    fn not_wraps_its_operand_in_nor() {
        assert_eq!(
            ops("not (a == 1 or b == 2) and !c == 3"),
            json!([
                {"op": "$nor", "with": [{"op": "$or", "with": [cmp("/a", "$eq", json!(1)), cmp("/b", "$eq", json!(2))]}]},
                {"op": "$nor", "with": [cmp("/c", "$eq", json!(3))]},
            ])
        );
    }

    #[test]
    fn paths_are_pointers_or_escaped_keys_and_a_pointer_operand_compares_two_keys() {
        assert_eq!(
            ops(
                "/limits/rps > 100 and /a~1b == \"slash\" and load < /limits/max and my.key-2 == 1 and / == 0"
            ),
            json!([
                cmp("/limits/rps", "$gt", json!(100)),
                cmp("/a~1b", "$eq", json!("slash")),
                {"path": "/load", "op": "$lt", "to": {"path": "/limits/max", "default": null}},
                cmp("/my.key-2", "$eq", json!(1)),
                cmp("/", "$eq", json!(0)),
            ])
        );
    }

    #[test]
    fn strings_take_json_escapes_in_either_quote() {
        assert_eq!(
            ops(r#"a == "say \"hi\"\n" and b == 'it\'s' and c == "\u00e9/\\""#),
            json!([
                cmp("/a", "$eq", json!("say \"hi\"\n")),
                cmp("/b", "$eq", json!("it's")),
                cmp("/c", "$eq", json!("\u{e9}/\\")),
            ])
        );
    }

    #[track_caller]
    fn fails(input: &str, message: &str, column: usize) {
        let error = parse(input).expect_err(input);
        assert_eq!(
            (error.message.as_str(), error.column),
            (message, column),
            "{input}"
        );
    }

    #[test]
    fn errors_say_what_was_expected_and_point_at_the_column() {
        fails(
            "region == eu",
            "expected a value, found the bare word `eu` (quote strings: \"eu\")",
            11,
        );
        fails("region = \"eu\"", "`=` is not an operator: write `==`", 8);
        fails(
            "version >= ",
            "expected a value (a \"string\", a number, a version, true, false, null or a list), found the end",
            12,
        );
        fails(
            "a == 1 and",
            "expected a key, a /path, `not` or `(`, found the end",
            11,
        );
        fails("(a == 1", "expected `)`, found the end", 8);
        fails("a == 1)", "expected `and`, `or` or the end, found `)`", 7);
        fails(
            "a 1",
            "expected an operator (==, !=, <, <=, >, >=, in, not in, contains, not contains), found value 1",
            3,
        );
        fails(
            "a not == 1",
            "expected `in` or `contains` after `not`, found `==`",
            7,
        );
        fails("a in 1", "expected a list `[...]`, found value 1", 6);
        fails("a in [1 2]", "expected `,` or `]`, found value 2", 9);
        fails(
            "a == 1.2.3.4",
            "`1.2.3.4` is not a number or a SemVer version",
            6,
        );
        fails("a == \"open", "unterminated string", 6);
        fails("a == \"\\q\"", "unknown escape in a string", 7);
        fails(
            "/a~2 == 1",
            "`~` in a path must be followed by 0 or 1 (`~0` is `~`, `~1` is `/`)",
            3,
        );
        fails("a == 1 & b == 2", "`&` is not an operator: write `&&`", 8);
        fails("a == #", "unexpected character `#`", 6);
        fails(
            "",
            "expected a key, a /path, `not` or `(`, found the end",
            1,
        );
        fails(
            "and == 1",
            "expected a key, a /path, `not` or `(`, found `and`",
            1,
        );
    }

    #[test]
    fn the_error_display_draws_a_caret_under_the_column() {
        let error = parse("load < 10 and region == eu").unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "expected a value, found the bare word `eu` (quote strings: \"eu\") at column 25\n  load < 10 and region == eu\n  {}^",
                " ".repeat(24)
            )
        );
    }
}
