//! KQL (Kibana Query Language): the parser and the compiled matcher for the
//! `query` of a rule.
//!
//! The accepted language is Kibana's grammar
//! (`kbn-es-query/src/kuery/grammar/grammar.peggy`), reproduced rule for rule
//! so that a query Kibana accepts parses here to the same tree and a query
//! Kibana rejects is rejected here too. Matching reproduces what the
//! detection engine's translation to Elasticsearch does (`is.ts`, `and.ts`,
//! `or.ts`, `not.ts`):
//!
//! - `field:value` on a keyword is an exact, case-sensitive `term`; on a
//!   number it is numeric equality (`1.0` equals `1`, `1.5` equals no long);
//!   on an IP it is equality or CIDR containment (`10.0.0.0/8`); on a
//!   boolean `true`/`false`.
//! - `field:*` is `exists`: any value, the empty string included.
//! - Unquoted `*` is a wildcard anywhere in a value; `\*` and a `*` inside
//!   quotes are literal stars. Wildcards apply to string values only.
//! - Every leaf is evaluated on its own against all values of a multi-valued
//!   field: `field:a` holds if any value is `a`, so `not field:(a or b)`
//!   excludes a document when *any* value is `a` or `b` (Elasticsearch's
//!   `must_not` semantics).
//!
//! What it deliberately does not do, each a load-time [`KqlError`] naming the
//! byte position: free-text values without a field (Kibana searches every
//! field; firstseen has no "all fields"), wildcard field names, range
//! operators (`<`, `<=`, `>`, `>=`), nested-field queries (`field:{...}`),
//! and unquoted `null`. Values that cannot have the type of a typed field
//! (`source.as.number:abc`, `source.ip:foo*`) are rejected as well, because
//! Elasticsearch would fail that query on every run.
//!
//! [`Query::parse`] does all the work once: field names are resolved to
//! [`FieldRef`]s, literals are pre-parsed into every form a [`FieldValue`]
//! variant needs, wildcard patterns are pre-split. [`Query::matches`] then
//! walks a small tree without allocating.
//!
//! This module is pure: no I/O, no clock.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::event::{Document, FieldRef, FieldTarget, FieldValue, KnownField};

/// Deeper nesting than this is refused so that a hostile query cannot
/// overflow the parser's stack. Real rules nest two or three levels.
const MAX_DEPTH: usize = 64;

/// Why a query was rejected, with the byte offset into the query text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {position}: {message}{}", HintSuffix(.hint.as_deref()))]
pub struct KqlError {
    position: usize,
    message: String,
    hint: Option<String>,
}

struct HintSuffix<'a>(Option<&'a str>);

impl fmt::Display for HintSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(hint) => write!(f, " (hint: {hint})"),
            None => Ok(()),
        }
    }
}

impl KqlError {
    fn new(position: usize, message: impl Into<String>) -> KqlError {
        KqlError {
            position,
            message: message.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> KqlError {
        self.hint = Some(hint.into());
        self
    }

    /// Byte offset into the query text where the problem is.
    pub fn position(&self) -> usize {
        self.position
    }

    /// What is wrong, without the position.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// How to fix it, when there is an obvious fix.
    pub fn hint_text(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

/// A compiled KQL query. Build it with [`Query::parse`]; evaluate it with
/// [`Query::matches`].
#[derive(Debug, Clone)]
pub struct Query {
    source: Box<str>,
    /// Every field the query reads, in order of first use; leaves refer to
    /// them by index.
    fields: Vec<FieldRef>,
    root: Node,
}

impl Query {
    /// Parses and compiles `src`.
    ///
    /// # Errors
    ///
    /// A [`KqlError`] for a syntax error, for an empty query, and for the
    /// syntax firstseen does not support (see the module documentation).
    pub fn parse(src: &str) -> Result<Query, KqlError> {
        let expr = Parser::new(src).parse_query()?;
        let mut compiler = Compiler { fields: Vec::new() };
        let root = compiler.compile(&expr)?;
        Ok(Query {
            source: src.into(),
            fields: compiler.fields,
            root,
        })
    }

    /// Whether `doc` matches. Never allocates and never fails: a missing
    /// field simply has no values.
    pub fn matches(&self, doc: &dyn Document) -> bool {
        self.eval(&self.root, doc)
    }

    /// A condition on field values that every matching document meets
    /// (implied by the query, usually weaker). The raw prefilter turns it
    /// into byte searches over a record's JSON text.
    pub fn necessary(&self) -> Necessary<'_> {
        self.necessary_of(&self.root).simplify()
    }

    fn necessary_of<'q>(&'q self, node: &'q Node) -> Necessary<'q> {
        match node {
            Node::All(nodes) => {
                Necessary::All(nodes.iter().map(|n| self.necessary_of(n)).collect())
            }
            Node::Any(nodes) => {
                Necessary::Any(nodes.iter().map(|n| self.necessary_of(n)).collect())
            }
            // A negation or an existence test implies nothing about values.
            Node::MatchAll | Node::Not(_) | Node::Exists(_) => Necessary::Unknown,
            Node::OneOf { field, values } => Necessary::Equals {
                field: &self.fields[*field],
                values: values.iter().map(|l| &*l.text).collect(),
            },
            Node::Pattern { field, pattern } => Necessary::Contains {
                field: &self.fields[*field],
                parts: std::iter::once(&*pattern.prefix)
                    .chain(pattern.middle.iter().map(|m| &**m))
                    .chain(std::iter::once(&*pattern.suffix))
                    .filter(|p| !p.is_empty())
                    .collect(),
            },
        }
    }

    /// The field names the query reads, each once, in order of first use.
    pub fn fields(&self) -> Vec<&str> {
        self.fields.iter().map(FieldRef::name).collect()
    }

    /// The query text as given to [`Query::parse`].
    pub fn source(&self) -> &str {
        &self.source
    }

    fn eval(&self, node: &Node, doc: &dyn Document) -> bool {
        match node {
            Node::MatchAll => true,
            Node::All(nodes) => nodes.iter().all(|n| self.eval(n, doc)),
            Node::Any(nodes) => nodes.iter().any(|n| self.eval(n, doc)),
            Node::Not(inner) => !self.eval(inner, doc),
            Node::Exists(field) => doc.any_value(&self.fields[*field], &mut |_| true),
            Node::OneOf { field, values } => doc.any_value(&self.fields[*field], &mut |v| {
                values.iter().any(|lit| lit.matches(v))
            }),
            Node::Pattern { field, pattern } => {
                doc.any_value(&self.fields[*field], &mut |v| match v {
                    FieldValue::Str(s) => pattern.matches(s),
                    _ => false,
                })
            }
        }
    }
}

/// What [`Query::necessary`] returns: a condition every document that
/// matches the query satisfies.
#[derive(Debug, Clone, PartialEq)]
pub enum Necessary<'q> {
    /// Nothing is known: any document may match.
    Unknown,
    /// Some value of `field` matches one of the literals. A string value
    /// matches a literal only when it equals the literal's text exactly;
    /// values of other types compare by type (numbers numerically, IPs by
    /// CIDR, booleans as `true`/`false`).
    Equals {
        field: &'q FieldRef,
        values: Vec<&'q str>,
    },
    /// Some string value of `field` contains every one of `parts`
    /// (a wildcard pattern's fixed pieces).
    Contains {
        field: &'q FieldRef,
        parts: Vec<&'q str>,
    },
    All(Vec<Necessary<'q>>),
    Any(Vec<Necessary<'q>>),
}

impl Necessary<'_> {
    /// Folds `Unknown` through `All` (dropped) and `Any` (absorbs).
    pub fn simplify(self) -> Self {
        match self {
            Necessary::All(items) => {
                let items: Vec<_> = items
                    .into_iter()
                    .map(Necessary::simplify)
                    .filter(|n| *n != Necessary::Unknown)
                    .collect();
                match items.len() {
                    0 => Necessary::Unknown,
                    1 => items.into_iter().next().expect("one item"),
                    _ => Necessary::All(items),
                }
            }
            Necessary::Any(items) => {
                let items: Vec<_> = items.into_iter().map(Necessary::simplify).collect();
                if items.is_empty() || items.contains(&Necessary::Unknown) {
                    Necessary::Unknown
                } else if items.len() == 1 {
                    items.into_iter().next().expect("one item")
                } else {
                    Necessary::Any(items)
                }
            }
            leaf => leaf,
        }
    }
}

/// The compiled tree.
#[derive(Debug, Clone)]
enum Node {
    /// `*:*`, Kibana's `match_all`.
    MatchAll,
    All(Box<[Node]>),
    Any(Box<[Node]>),
    Not(Box<Node>),
    Exists(usize),
    /// Some value of the field equals one of the literals. A single
    /// `field:value` is a one-element list; `field:(a or b or c)` of plain
    /// literals folds into one list so the document is visited once.
    OneOf {
        field: usize,
        values: Box<[Literal]>,
    },
    Pattern {
        field: usize,
        pattern: Pattern,
    },
}

/// A literal value, pre-parsed into the form each [`FieldValue`] variant is
/// compared with.
#[derive(Debug, Clone)]
struct Literal {
    text: Box<str>,
    int: Option<i64>,
    float: Option<f64>,
    ip: Option<IpNet>,
    boolean: Option<bool>,
}

impl Literal {
    fn new(text: &str) -> Literal {
        // Rust's float parser also accepts "inf" and "NaN"; Elasticsearch
        // would not treat those as numbers a long or double can equal.
        let float = text.parse::<f64>().ok().filter(|f| f.is_finite());
        // Elasticsearch's term query on a long field matches `1.0` to 1 and
        // matches nothing for a value with a fractional part.
        let int = text.parse::<i64>().ok().or_else(|| {
            float
                .filter(|f| {
                    f.fract() == 0.0
                        && *f >= -9.223_372_036_854_776e18
                        && *f < 9.223_372_036_854_776e18
                })
                .map(|f| f as i64)
        });
        let ip = text.parse::<IpNet>().ok().or_else(|| {
            text.parse::<IpAddr>()
                .ok()
                .map(|ip| IpNet::from(canonical_ip(ip)))
        });
        let boolean = match text {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        };
        Literal {
            text: text.into(),
            int,
            float,
            ip,
            boolean,
        }
    }

    fn matches(&self, value: FieldValue<'_>) -> bool {
        match value {
            FieldValue::Str(s) => s == &*self.text,
            FieldValue::Int(i) => self.int == Some(i),
            FieldValue::Float(f) => self.float == Some(f),
            FieldValue::Bool(b) => self.boolean == Some(b),
            FieldValue::Ip(ip) => self.ip.is_some_and(|net| net.contains(&canonical_ip(ip))),
        }
    }
}

/// Elasticsearch stores IPv4 addresses as IPv4-mapped IPv6, so
/// `::ffff:10.0.0.1` and `10.0.0.1` are the same value.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A wildcard pattern split at its unescaped `*`s: the value must start
/// with `prefix`, end with `suffix` and contain the `middle` parts in order
/// between them. Matching leftmost-first is exact for `*`-only patterns.
#[derive(Debug, Clone)]
struct Pattern {
    prefix: Box<str>,
    middle: Box<[Box<str>]>,
    suffix: Box<str>,
}

impl Pattern {
    /// `segments` has at least two elements (at least one `*`).
    fn new(segments: &[String]) -> Pattern {
        let last = segments.len() - 1;
        Pattern {
            prefix: segments[0].as_str().into(),
            middle: segments[1..last]
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| s.as_str().into())
                .collect(),
            suffix: segments[last].as_str().into(),
        }
    }

    fn matches(&self, value: &str) -> bool {
        if value.len() < self.prefix.len() + self.suffix.len()
            || !value.starts_with(&*self.prefix)
            || !value.ends_with(&*self.suffix)
        {
            return false;
        }
        // Both cuts are on char boundaries: they end a matched prefix and
        // start a matched suffix.
        let mut rest = &value[self.prefix.len()..value.len() - self.suffix.len()];
        for part in self.middle.iter() {
            match rest.find(&**part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        true
    }
}

// ---------------------------------------------------------------------------
// Syntax tree, as the grammar produces it (before support checks).

#[derive(Debug)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Field { field: Lit, values: Values },
    FreeText(Lit),
    Range { at: usize, op: &'static str },
    Nested { at: usize },
}

#[derive(Debug)]
enum Values {
    Or(Vec<Values>),
    And(Vec<Values>),
    Not(Box<Values>),
    One(Lit),
}

/// A literal as written: quoted or not, split at unescaped `*`s (one
/// segment when there is no wildcard), escapes already resolved.
#[derive(Debug)]
struct Lit {
    at: usize,
    quoted: bool,
    segments: Vec<String>,
}

impl Lit {
    fn is_wildcard(&self) -> bool {
        self.segments.len() > 1
    }

    /// The text for error messages, with `*` where the wildcards were.
    fn display(&self) -> String {
        self.segments.join("*")
    }
}

// ---------------------------------------------------------------------------
// Parser: recursive descent over Kibana's PEG grammar. Where the grammar
// would backtrack and then fail anyway, this reports the first failure with
// a message about it.

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

/// Kibana's `Space`.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n' | '\u{a0}')
}

/// Kibana's `SpecialCharacter`, minus `\` and `*` which the literal scanner
/// handles itself.
fn is_special(c: char) -> bool {
    matches!(c, '(' | ')' | ':' | '<' | '>' | '"' | '{' | '}')
}

fn starts_with_ci(s: &str, word: &str) -> bool {
    s.len() >= word.len() && s.as_bytes()[..word.len()].eq_ignore_ascii_case(word.as_bytes())
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Parser<'a> {
        Parser {
            src,
            pos: 0,
            depth: 0,
        }
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_spaces(&mut self) -> bool {
        let start = self.pos;
        while let Some(c) = self.peek().filter(|c| is_space(*c)) {
            self.pos += c.len_utf8();
        }
        self.pos > start
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// `Space+ word Space+` (Kibana's `Or` and `And`), consumed only if it
    /// matches whole.
    fn eat_infix(&mut self, word: &str) -> bool {
        let start = self.pos;
        if self.skip_spaces() && starts_with_ci(self.rest(), word) {
            self.pos += word.len();
            if self.skip_spaces() {
                return true;
            }
        }
        self.pos = start;
        false
    }

    /// `'not'i Space+` (Kibana's `Not`).
    fn eat_not(&mut self) -> bool {
        let start = self.pos;
        if starts_with_ci(self.rest(), "not") {
            self.pos += 3;
            if self.skip_spaces() {
                return true;
            }
        }
        self.pos = start;
        false
    }

    /// Kibana's `Keyword` lookahead, which ends an unquoted literal:
    /// `Space or Space`, `Space and Space`, or `not Space`.
    fn at_keyword(&self) -> bool {
        let rest = self.rest();
        let followed_by_space = |s: &str, n: usize| s[n..].chars().next().is_some_and(is_space);
        if starts_with_ci(rest, "not") && followed_by_space(rest, 3) {
            return true;
        }
        let mut chars = rest.chars();
        match chars.next() {
            Some(c) if is_space(c) => {
                let after = chars.as_str();
                (starts_with_ci(after, "or") && followed_by_space(after, 2))
                    || (starts_with_ci(after, "and") && followed_by_space(after, 3))
            }
            _ => false,
        }
    }

    fn describe_here(&self) -> String {
        match self.peek() {
            None => "the end of the query".to_string(),
            Some(c) => format!("`{c}`"),
        }
    }

    fn enter(&mut self) -> Result<(), KqlError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(KqlError::new(
                self.pos,
                format!("the query nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    fn parse_query(&mut self) -> Result<Expr, KqlError> {
        self.skip_spaces();
        if self.peek().is_none() {
            return Err(KqlError::new(self.pos, "the query is empty").hint(
                "Kibana treats an empty query as \"match everything\"; write the condition explicitly",
            ));
        }
        let expr = self.parse_or()?;
        self.skip_spaces();
        if self.peek().is_some() {
            let mut err = KqlError::new(
                self.pos,
                format!(
                    "unexpected {}; expected `and`, `or` or the end of the query",
                    self.describe_here()
                ),
            );
            if self.peek() == Some(':') {
                err =
                    err.hint("a value containing spaces or `:` must be quoted, e.g. field:\"a b\"");
            } else if self.peek() == Some(')') {
                err = err.hint("this `)` has no matching `(`");
            }
            return Err(err);
        }
        Ok(expr)
    }

    fn parse_or(&mut self) -> Result<Expr, KqlError> {
        let mut items = vec![self.parse_and()?];
        while self.eat_infix("or") {
            items.push(self.parse_and()?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            Expr::Or(items)
        })
    }

    fn parse_and(&mut self) -> Result<Expr, KqlError> {
        let mut items = vec![self.parse_not()?];
        while self.eat_infix("and") {
            items.push(self.parse_not()?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            Expr::And(items)
        })
    }

    fn parse_not(&mut self) -> Result<Expr, KqlError> {
        if self.eat_not() {
            return Ok(Expr::Not(Box::new(self.parse_sub()?)));
        }
        self.parse_sub()
    }

    fn parse_sub(&mut self) -> Result<Expr, KqlError> {
        let open = self.pos;
        if self.eat('(') {
            self.enter()?;
            self.skip_spaces();
            let expr = self.parse_or()?;
            self.skip_spaces();
            if !self.eat(')') {
                return Err(KqlError::new(
                    self.pos,
                    format!(
                        "unexpected {}; expected `)` to close the `(` at byte {open}",
                        self.describe_here()
                    ),
                ));
            }
            self.depth -= 1;
            return Ok(expr);
        }
        self.parse_expression()
    }

    /// Kibana's `NestedQuery / FieldRangeExpression / FieldValueExpression /
    /// ValueExpression`: all start with a literal.
    fn parse_expression(&mut self) -> Result<Expr, KqlError> {
        let Some(first) = self.parse_literal()? else {
            let mut err = KqlError::new(
                self.pos,
                format!(
                    "unexpected {}; expected a field name, a value or `(`",
                    self.describe_here()
                ),
            );
            if self.rest().len() >= 3 && starts_with_ci(self.rest(), "not") {
                err = err.hint("`not` must be followed by a space, then a condition or a `(...)` group (and `not not` is not allowed)");
            }
            return Err(err);
        };
        let after_literal = self.pos;
        self.skip_spaces();
        let op_at = self.pos;
        for op in ["<=", ">=", "<", ">"] {
            if self.rest().starts_with(op) {
                self.pos += op.len();
                self.skip_spaces();
                if self.parse_literal()?.is_none() {
                    return Err(KqlError::new(
                        self.pos,
                        format!(
                            "unexpected {}; expected a value after `{op}`",
                            self.describe_here()
                        ),
                    ));
                }
                return Ok(Expr::Range { at: op_at, op });
            }
        }
        if self.eat(':') {
            self.skip_spaces();
            let brace = self.pos;
            if self.eat('{') {
                self.enter()?;
                self.skip_spaces();
                self.parse_or()?;
                self.skip_spaces();
                if !self.eat('}') {
                    return Err(KqlError::new(
                        self.pos,
                        format!(
                            "unexpected {}; expected `}}` to close the `{{` at byte {brace}",
                            self.describe_here()
                        ),
                    ));
                }
                self.depth -= 1;
                return Ok(Expr::Nested { at: brace });
            }
            let values = self.parse_list_of_values()?;
            return Ok(Expr::Field {
                field: first,
                values,
            });
        }
        self.pos = after_literal;
        Ok(Expr::FreeText(first))
    }

    fn parse_list_of_values(&mut self) -> Result<Values, KqlError> {
        let open = self.pos;
        if self.eat('(') {
            self.enter()?;
            self.skip_spaces();
            let values = self.parse_or_values()?;
            self.skip_spaces();
            if !self.eat(')') {
                return Err(KqlError::new(
                    self.pos,
                    format!(
                        "unexpected {}; expected `)` to close the `(` at byte {open}",
                        self.describe_here()
                    ),
                ));
            }
            self.depth -= 1;
            return Ok(values);
        }
        match self.parse_literal()? {
            Some(lit) => Ok(Values::One(lit)),
            None => {
                let mut err = KqlError::new(
                    self.pos,
                    format!(
                        "unexpected {}; expected a value or `(`",
                        self.describe_here()
                    ),
                );
                if starts_with_ci(self.rest(), "not") {
                    err = err
                        .hint("to negate a value write `not field:value` or `field:(not value)`");
                }
                Err(err)
            }
        }
    }

    fn parse_or_values(&mut self) -> Result<Values, KqlError> {
        let mut items = vec![self.parse_and_values()?];
        while self.eat_infix("or") {
            items.push(self.parse_and_values()?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            Values::Or(items)
        })
    }

    fn parse_and_values(&mut self) -> Result<Values, KqlError> {
        let mut items = vec![self.parse_not_values()?];
        while self.eat_infix("and") {
            items.push(self.parse_not_values()?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            Values::And(items)
        })
    }

    fn parse_not_values(&mut self) -> Result<Values, KqlError> {
        if self.eat_not() {
            return Ok(Values::Not(Box::new(self.parse_list_of_values()?)));
        }
        self.parse_list_of_values()
    }

    /// Kibana's `Literal = QuotedString / UnquotedLiteral`; `None` when
    /// neither can start here.
    fn parse_literal(&mut self) -> Result<Option<Lit>, KqlError> {
        if self.peek() == Some('"') {
            return self.parse_quoted().map(Some);
        }
        self.parse_unquoted()
    }

    /// `\uXXXX` right after the backslash at `self.pos - 1`, if present.
    fn unicode_escape(&self) -> Option<Result<char, KqlError>> {
        let rest = self.rest();
        let hex = rest.strip_prefix('u')?.get(..4)?;
        if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let code = u32::from_str_radix(hex, 16).ok()?;
        Some(char::from_u32(code).ok_or_else(|| {
            KqlError::new(
                self.pos - 1,
                format!("`\\u{hex}` is not a Unicode scalar value (a lone surrogate)"),
            )
        }))
    }

    fn parse_quoted(&mut self) -> Result<Lit, KqlError> {
        let at = self.pos;
        self.pos += 1;
        let mut text = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(
                    KqlError::new(at, "unterminated quoted value: no closing `\"`")
                        .hint("inside quotes, write `\\\"` for a quote and `\\\\` for a backslash"),
                );
            };
            self.pos += c.len_utf8();
            match c {
                '"' => break,
                '\\' => match self.peek() {
                    Some('t') => {
                        text.push('\t');
                        self.pos += 1;
                    }
                    Some('r') => {
                        text.push('\r');
                        self.pos += 1;
                    }
                    Some('n') => {
                        text.push('\n');
                        self.pos += 1;
                    }
                    Some(q @ ('\\' | '"')) => {
                        text.push(q);
                        self.pos += 1;
                    }
                    _ => match self.unicode_escape() {
                        Some(decoded) => {
                            text.push(decoded?);
                            self.pos += 5;
                        }
                        // Any other backslash is an ordinary character
                        // inside quotes (the grammar's `[^"]`).
                        None => text.push('\\'),
                    },
                },
                other => text.push(other),
            }
        }
        Ok(Lit {
            at,
            quoted: true,
            segments: vec![text],
        })
    }

    fn parse_unquoted(&mut self) -> Result<Option<Lit>, KqlError> {
        let at = self.pos;
        let mut segments = vec![String::new()];
        let mut any = false;
        while let Some(c) = self.peek() {
            if c == '\\' {
                let escape_at = self.pos;
                self.pos += 1;
                let current = segments.last_mut().expect("at least one segment");
                match self.peek() {
                    Some('t') => current.push('\t'),
                    Some('r') => current.push('\r'),
                    Some('n') => current.push('\n'),
                    Some(s @ ('\\' | '(' | ')' | ':' | '<' | '>' | '"' | '*' | '{' | '}')) => {
                        current.push(s)
                    }
                    _ => {
                        if let Some(decoded) = self.unicode_escape() {
                            current.push(decoded?);
                            self.pos += 5;
                            any = true;
                            continue;
                        }
                        let rest = self.rest();
                        let keyword = ["or", "and", "not"]
                            .into_iter()
                            .find(|k| starts_with_ci(rest, k));
                        match keyword {
                            Some(k) => {
                                current.push_str(&rest[..k.len()]);
                                self.pos += k.len();
                                any = true;
                                continue;
                            }
                            None => {
                                return Err(KqlError::new(
                                    escape_at,
                                    format!(
                                        "`\\{}` is not an escape KQL knows",
                                        self.peek().map_or(String::new(), String::from)
                                    ),
                                )
                                .hint("escape one of \\ ( ) : < > \" * { } or a keyword (\\or), or quote the value"));
                            }
                        }
                    }
                }
                // Every single-character escape above is ASCII.
                self.pos += 1;
                any = true;
                continue;
            }
            if c == '*' {
                segments.push(String::new());
                self.pos += 1;
                any = true;
                continue;
            }
            if is_special(c) || self.at_keyword() {
                break;
            }
            segments.last_mut().expect("at least one segment").push(c);
            self.pos += c.len_utf8();
            any = true;
        }
        if !any {
            return Ok(None);
        }
        // Kibana trims the joined sequence, wildcards included.
        let last = segments.len() - 1;
        segments[last] = segments[last].trim_end().to_string();
        segments[0] = segments[0].trim_start().to_string();
        Ok(Some(Lit {
            at,
            quoted: false,
            segments,
        }))
    }
}

// ---------------------------------------------------------------------------
// Compiler: support checks, field resolution, literal pre-parsing.

struct Compiler {
    fields: Vec<FieldRef>,
}

/// What a typed field of the normalized event can hold, for load-time
/// checks of literals against it.
#[derive(Clone, Copy, PartialEq)]
enum FieldKind {
    Number,
    Ip,
    Other,
}

fn field_kind(field: &FieldRef) -> FieldKind {
    match field.target() {
        FieldTarget::Known(KnownField::SourceAsNumber | KnownField::EventDuration) => {
            FieldKind::Number
        }
        FieldTarget::Known(KnownField::SourceIp | KnownField::ClientIp | KnownField::RelatedIp) => {
            FieldKind::Ip
        }
        _ => FieldKind::Other,
    }
}

impl Compiler {
    fn field_index(&mut self, name: &str) -> usize {
        if let Some(i) = self.fields.iter().position(|f| f.name() == name) {
            return i;
        }
        self.fields.push(FieldRef::resolve(name));
        self.fields.len() - 1
    }

    fn compile(&mut self, expr: &Expr) -> Result<Node, KqlError> {
        Ok(match expr {
            Expr::Or(items) => Node::Any(self.compile_all(items)?),
            Expr::And(items) => Node::All(self.compile_all(items)?),
            Expr::Not(inner) => Node::Not(Box::new(self.compile(inner)?)),
            Expr::FreeText(lit) => {
                return Err(KqlError::new(
                    lit.at,
                    format!(
                        "`{}` has no field: Kibana would search it in every field, and firstseen does not support free-text search",
                        lit.display()
                    ),
                )
                .hint("write field:value; for several values of one field write field:(a or b)"))
            }
            Expr::Range { at, op } => {
                return Err(KqlError::new(
                    *at,
                    format!("range queries (`{op}`) are not supported by firstseen"),
                )
                .hint("firstseen supports field:value, field:*, field:(a or b) and and/or/not"))
            }
            Expr::Nested { at } => {
                return Err(KqlError::new(
                    *at,
                    "nested-field queries (`field:{ ... }`) are not supported by firstseen",
                )
                .hint("query the nested fields by their full dotted names instead"))
            }
            Expr::Field { field, values } => {
                if field.is_wildcard() {
                    if !field.quoted
                        && field.segments.iter().all(|s| s.is_empty())
                        && field.segments.len() == 2
                        && matches!(values, Values::One(v) if is_lone_star(v))
                    {
                        return Ok(Node::MatchAll);
                    }
                    return Err(KqlError::new(
                        field.at,
                        format!("wildcard field names (`{}`) are not supported by firstseen", field.display()),
                    )
                    .hint("name each field exactly"));
                }
                let name = &field.segments[0];
                if name.is_empty() {
                    return Err(KqlError::new(field.at, "the field name is empty"));
                }
                let index = self.field_index(name);
                self.compile_values(index, values)?
            }
        })
    }

    fn compile_all(&mut self, items: &[Expr]) -> Result<Box<[Node]>, KqlError> {
        items.iter().map(|e| self.compile(e)).collect()
    }

    fn compile_values(&mut self, field: usize, values: &Values) -> Result<Node, KqlError> {
        Ok(match values {
            Values::One(lit) => self.compile_value(field, lit)?,
            Values::Not(inner) => Node::Not(Box::new(self.compile_values(field, inner)?)),
            Values::And(items) => Node::All(
                items
                    .iter()
                    .map(|v| self.compile_values(field, v))
                    .collect::<Result<_, _>>()?,
            ),
            Values::Or(items) => {
                let nodes = items
                    .iter()
                    .map(|v| self.compile_values(field, v))
                    .collect::<Result<Vec<_>, _>>()?;
                // `field:(a or b or c)` of plain values: one pass over the
                // field's values instead of one per literal. Same result,
                // because "some value equals some literal" does not depend
                // on the grouping.
                if nodes.iter().all(|n| matches!(n, Node::OneOf { .. })) {
                    let mut merged = Vec::new();
                    for node in nodes {
                        if let Node::OneOf { values, .. } = node {
                            merged.extend(values.into_vec());
                        }
                    }
                    Node::OneOf {
                        field,
                        values: merged.into(),
                    }
                } else {
                    Node::Any(nodes.into())
                }
            }
        })
    }

    fn compile_value(&mut self, field: usize, lit: &Lit) -> Result<Node, KqlError> {
        let kind = field_kind(&self.fields[field]);
        let name = self.fields[field].name().to_string();
        if lit.is_wildcard() {
            // `*`, and also `**`: a pattern of nothing but stars matches
            // any value, which is what `exists` means.
            if lit.segments.iter().all(|s| s.is_empty()) {
                return Ok(Node::Exists(field));
            }
            if kind != FieldKind::Other {
                let what = if kind == FieldKind::Ip {
                    "an IP"
                } else {
                    "a numeric"
                };
                let mut err = KqlError::new(
                    lit.at,
                    format!(
                        "`{name}` is {what} field, and wildcards (`{}`) only apply to text values",
                        lit.display()
                    ),
                );
                if kind == FieldKind::Ip {
                    err = err
                        .hint("match a network with a CIDR block, e.g. source.ip:\"10.0.0.0/8\"");
                }
                return Err(err);
            }
            return Ok(Node::Pattern {
                field,
                pattern: Pattern::new(&lit.segments),
            });
        }
        let text = &lit.segments[0];
        if !lit.quoted && text == "null" {
            return Err(KqlError::new(
                lit.at,
                "an unquoted `null` is not a value KQL can match (Elasticsearch rejects it)",
            )
            .hint(format!("to test that the field is missing write `not {name}:*`; to match the text write \"null\"")));
        }
        let literal = Literal::new(text);
        match kind {
            FieldKind::Number if literal.float.is_none() => Err(KqlError::new(
                lit.at,
                format!("`{name}` is a numeric field and `{text}` is not a number"),
            )),
            FieldKind::Ip if literal.ip.is_none() => Err(KqlError::new(
                lit.at,
                format!("`{name}` is an IP field and `{text}` is neither an IP address nor a CIDR block"),
            )
            .hint("IPv6 values contain `:`, so quote them: source.ip:\"2001:db8::/32\"")),
            _ => Ok(Node::OneOf {
                field,
                values: vec![literal].into(),
            }),
        }
    }
}

fn is_lone_star(lit: &Lit) -> bool {
    !lit.quoted && lit.segments.len() == 2 && lit.segments.iter().all(|s| s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// The seed rule's query, verbatim.
    const SEED: &str = r#"data_stream.dataset:azure.activitylogs and event.action:("MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/DELETE" or "MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/READ" or "MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/WRITE" or "MICROSOFT.COMPUTE/VIRTUALMACHINESCALESETS/EXTENSIONS/DELETE" or "MICROSOFT.COMPUTE/VIRTUALMACHINESCALESETS/EXTENSIONS/READ" or "MICROSOFT.COMPUTE/VIRTUALMACHINESCALESETS/EXTENSIONS/WRITE") and event.outcome:(Success or success) and azure.resource.name:* and source.as.number:(* and not (3598 or 8068 or 8069 or 8070 or 8071 or 8072 or 8073 or 8074 or 8075 or 12076))"#;

    fn seed_doc() -> Value {
        json!({
            "data_stream": {"dataset": "azure.activitylogs"},
            "event": {"action": "MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/WRITE", "outcome": "success"},
            "azure": {"resource": {"name": "VM1/EXTENSIONS/CUSTOMSCRIPT"}},
            "source": {"ip": "203.0.113.7", "as": {"number": 64500}}
        })
    }

    /// `seed_doc` with one dotted path replaced (or removed, for `Null`).
    fn seed_with(path: &str, value: Value) -> Value {
        let mut doc = seed_doc();
        let parts: Vec<&str> = path.split('.').collect();
        let mut cur = &mut doc;
        for p in &parts[..parts.len() - 1] {
            cur = cur.get_mut(*p).expect("path exists in seed_doc");
        }
        let map = cur.as_object_mut().expect("object");
        if value.is_null() {
            map.remove(parts[parts.len() - 1]);
        } else {
            map.insert(parts[parts.len() - 1].to_string(), value);
        }
        doc
    }

    #[test]
    fn table() {
        let cases: Vec<(&str, Value, bool)> = vec![
            // field:value, unquoted and quoted; keywords exact and case-sensitive.
            ("a:b", json!({"a": "b"}), true),
            ("a:b", json!({"a": "B"}), false),
            ("a:b", json!({"a": "bc"}), false),
            ("a:b", json!({}), false),
            ("a:\"b\"", json!({"a": "b"}), true),
            ("a : b", json!({"a": "b"}), true),
            ("a.b.c:x", json!({"a": {"b": {"c": "x"}}}), true),
            ("a.b.c:x", json!({"a.b": {"c": "x"}}), true),
            (
                "data_stream.dataset:azure.activitylogs",
                json!({"data_stream": {"dataset": "azure.activitylogs"}}),
                true,
            ),
            // Unquoted values may contain spaces (trimmed at both ends).
            (
                "a:hello world  and b:c",
                json!({"a": "hello world", "b": "c"}),
                true,
            ),
            ("a:\"hello world\"", json!({"a": "hello world"}), true),
            ("a:\" padded \"", json!({"a": " padded "}), true),
            ("a:\" padded \"", json!({"a": "padded"}), false),
            // Escapes, unquoted and quoted.
            (r#"a:x\:y"#, json!({"a": "x:y"}), true),
            (r#"a:\(x\)"#, json!({"a": "(x)"}), true),
            (r#"a:\<\>\{\}"#, json!({"a": "<>{}"}), true),
            (r#"a:back\\slash"#, json!({"a": "back\\slash"}), true),
            (r#"a:\"q\""#, json!({"a": "\"q\""}), true),
            (r#"a:tab\there"#, json!({"a": "tab\there"}), true),
            (r#"a:\u0041B"#, json!({"a": "AB"}), true),
            (r#"a:x \or y"#, json!({"a": "x or y"}), true),
            (r#"a:"say \"hi\"""#, json!({"a": "say \"hi\""}), true),
            (r#"a:"c:\\dir""#, json!({"a": "c:\\dir"}), true),
            (r#"a:"x\*""#, json!({"a": "x\\*"}), true),
            // Exists: any value, the empty string included; null is no value.
            ("a:*", json!({"a": ""}), true),
            ("a:*", json!({"a": 0}), true),
            ("a:*", json!({"a": false}), true),
            ("a:*", json!({"a": ["x"]}), true),
            ("a:*", json!({"a": null}), false),
            ("a:*", json!({"a": []}), false),
            ("a:*", json!({"b": "x"}), false),
            ("a:**", json!({"a": 5}), true),
            ("*:*", json!({}), true),
            // Wildcards: leading, trailing, inner, several; escaped and quoted stars are literal.
            ("a:foo*", json!({"a": "foobar"}), true),
            ("a:foo*", json!({"a": "foo"}), true),
            ("a:foo*", json!({"a": "xfoo"}), false),
            ("a:*bar", json!({"a": "foobar"}), true),
            ("a:*bar", json!({"a": "barx"}), false),
            ("a:*oba*", json!({"a": "foobar"}), true),
            ("a:*OBA*", json!({"a": "foobar"}), false),
            ("a:f*r", json!({"a": "foobar"}), true),
            ("a:f*r", json!({"a": "fr"}), true),
            ("a:ab*ba", json!({"a": "aba"}), false),
            ("a:ab*ba", json!({"a": "abba"}), true),
            ("a:a*b*c*d", json!({"a": "axxbyyczzd"}), true),
            ("a:a*c*b*d", json!({"a": "axxbyyczzd"}), false),
            (
                "a:Mozilla*PKeyAuth/1.0",
                json!({"a": "Mozilla/5.0 (Windows) PKeyAuth/1.0"}),
                true,
            ),
            (r#"a:x\*"#, json!({"a": "x*"}), true),
            (r#"a:x\*"#, json!({"a": "xy"}), false),
            ("a:\"x*\"", json!({"a": "x*"}), true),
            ("a:\"x*\"", json!({"a": "xy"}), false),
            ("a:\"*\"", json!({"a": "x"}), false),
            ("a:\"*\"", json!({"a": "*"}), true),
            (
                r#"a:*\"allowBlobPublicAccess\"\:true*"#,
                json!({"a": "{\"allowBlobPublicAccess\":true,\"x\":1}"}),
                true,
            ),
            (
                r#"a:*\"allowBlobPublicAccess\"\:true*"#,
                json!({"a": "{\"allowBlobPublicAccess\":false}"}),
                false,
            ),
            ("a:*é*", json!({"a": "café au lait"}), true),
            ("a:x*", json!({"a": 5}), false),
            // Field groups.
            ("a:(x or y)", json!({"a": "y"}), true),
            ("a:(x or y)", json!({"a": "z"}), false),
            ("a:(x and y)", json!({"a": ["x", "y"]}), true),
            ("a:(x and y)", json!({"a": "x"}), false),
            ("a:(x OR y)", json!({"a": "x"}), true),
            ("a:( x or (y and not z) )", json!({"a": ["y", "w"]}), true),
            ("a:( x or (y and not z) )", json!({"a": ["y", "z"]}), false),
            ("a:(not x)", json!({"a": "y"}), true),
            ("a:(not x)", json!({}), true),
            // and / or / not in any case, precedence not > and > or, nesting.
            ("a:1 and b:2", json!({"a": 1, "b": 2}), true),
            ("a:1 AND b:2", json!({"a": 1, "b": 3}), false),
            ("a:1 Or b:2", json!({"a": 0, "b": 2}), true),
            ("a:1 or b:2 and c:3", json!({"a": 1}), true),
            ("a:1 or b:2 and c:3", json!({"b": 2}), false),
            ("(a:1 or b:2) and c:3", json!({"a": 1}), false),
            ("(a:1 or b:2) and c:3", json!({"b": 2, "c": 3}), true),
            ("not a:1 and b:2", json!({"a": 2, "b": 2}), true),
            ("not a:1 and b:2", json!({"a": 1, "b": 2}), false),
            ("NOT a:1", json!({}), true),
            ("not (a:1 or b:2)", json!({"b": 2}), false),
            ("not (not a:1)", json!({"a": 1}), true),
            ("((a:1))", json!({"a": 1}), true),
            // Numbers: numeric equality on numeric values, string equality on strings.
            ("n:8068", json!({"n": 8068}), true),
            ("n:8068", json!({"n": 8069}), false),
            ("n:\"8068\"", json!({"n": 8068}), true),
            ("n:1.0", json!({"n": 1}), true),
            ("n:1.5", json!({"n": 1}), false),
            ("n:1", json!({"n": 1.0}), true),
            ("n:1.5", json!({"n": 1.5}), true),
            ("n:8068", json!({"n": "8068"}), true),
            ("n:8068", json!({"n": "08068"}), false),
            ("n:abc", json!({"n": 5}), false),
            // Booleans.
            ("b:true", json!({"b": true}), true),
            ("b:true", json!({"b": false}), false),
            ("b:false", json!({"b": false}), true),
            ("b:\"true\"", json!({"b": true}), true),
            ("b:true", json!({"b": "true"}), true),
            // IPs: equality and CIDR on IP values; IPv4-mapped IPv6 equals IPv4.
            (
                "source.ip:10.0.0.0/8",
                json!({"source": {"ip": "10.1.2.3"}}),
                true,
            ),
            (
                "source.ip:10.0.0.0/8",
                json!({"source": {"ip": "11.1.2.3"}}),
                false,
            ),
            (
                "source.ip:10.1.2.3",
                json!({"source": {"ip": "10.1.2.3"}}),
                true,
            ),
            (
                "source.ip:10.1.2.3",
                json!({"source": {"ip": "10.1.2.4"}}),
                false,
            ),
            (
                "source.ip:\"2001:db8::/32\"",
                json!({"source": {"ip": "2001:db8:1::5"}}),
                true,
            ),
            (
                "source.ip:\"2001:db8::/32\"",
                json!({"source": {"ip": "2001:db9::5"}}),
                false,
            ),
            (
                "source.ip:\"2001:db8::/32\"",
                json!({"source": {"ip": "10.0.0.1"}}),
                false,
            ),
            (
                r#"source.ip:2001\:db8\:\:1"#,
                json!({"source": {"ip": "2001:db8::1"}}),
                true,
            ),
            (
                "source.ip:10.0.0.1",
                json!({"source": {"ip": "::ffff:10.0.0.1"}}),
                true,
            ),
            (
                "not source.ip:(\"10.0.0.0/8\" or \"192.168.0.0/16\")",
                json!({"source": {"ip": "192.168.1.1"}}),
                false,
            ),
            (
                "not source.ip:(\"10.0.0.0/8\" or \"192.168.0.0/16\")",
                json!({"source": {"ip": "8.8.8.8"}}),
                true,
            ),
            (
                "related.ip:\"10.0.0.0/8\"",
                json!({"related": {"ip": ["8.8.8.8", "10.9.9.9"]}}),
                true,
            ),
            // Multi-valued fields: a leaf holds if any element matches.
            ("tags:b", json!({"tags": ["a", "b"]}), true),
            ("tags:(c or d)", json!({"tags": ["a", "b"]}), false),
            ("not tags:(a or z)", json!({"tags": ["a", "b"]}), false),
            ("not tags:(y or z)", json!({"tags": ["a", "b"]}), true),
            ("n:(* and not (1 or 2))", json!({"n": [3, 1]}), false),
            ("n:(* and not (1 or 2))", json!({"n": [3, 4]}), true),
            // Unknown fields have no values.
            ("nope:*", json!({"a": 1}), false),
            ("not nope:x", json!({"a": 1}), true),
        ];
        let mut failures = Vec::new();
        for (query, doc, expected) in &cases {
            let compiled = Query::parse(query).unwrap_or_else(|e| panic!("{query}: {e}"));
            if compiled.matches(doc) != *expected {
                failures.push(format!("{query} on {doc} should be {expected}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn seed_rule_query() {
        let q = Query::parse(SEED).unwrap();
        let cases: Vec<(&str, Value, bool)> = vec![
            ("matching write", seed_doc(), true),
            (
                "scale-set delete",
                seed_with(
                    "event.action",
                    json!("MICROSOFT.COMPUTE/VIRTUALMACHINESCALESETS/EXTENSIONS/DELETE"),
                ),
                true,
            ),
            (
                "outcome Success",
                seed_with("event.outcome", json!("Success")),
                true,
            ),
            (
                "outcome SUCCESS",
                seed_with("event.outcome", json!("SUCCESS")),
                false,
            ),
            (
                "outcome failure",
                seed_with("event.outcome", json!("failure")),
                false,
            ),
            (
                "ASN 8068 excluded",
                seed_with("source.as.number", json!(8068)),
                false,
            ),
            (
                "ASN 8075 excluded",
                seed_with("source.as.number", json!(8075)),
                false,
            ),
            (
                "ASN 3598 excluded",
                seed_with("source.as.number", json!(3598)),
                false,
            ),
            (
                "ASN 12076 excluded",
                seed_with("source.as.number", json!(12076)),
                false,
            ),
            (
                "ASN 8076 not excluded",
                seed_with("source.as.number", json!(8076)),
                true,
            ),
            (
                "ASN 8067 not excluded",
                seed_with("source.as.number", json!(8067)),
                true,
            ),
            ("no ASN", seed_with("source.as.number", Value::Null), false),
            (
                "no resource name",
                seed_with("azure.resource.name", Value::Null),
                false,
            ),
            (
                "empty resource name exists",
                seed_with("azure.resource.name", json!("")),
                true,
            ),
            (
                "lower-case action",
                seed_with(
                    "event.action",
                    json!("microsoft.compute/virtualmachines/extensions/write"),
                ),
                false,
            ),
            (
                "other operation",
                seed_with(
                    "event.action",
                    json!("MICROSOFT.COMPUTE/VIRTUALMACHINES/WRITE"),
                ),
                false,
            ),
            (
                "other dataset",
                seed_with("data_stream.dataset", json!("azure.signinlogs")),
                false,
            ),
        ];
        for (name, doc, expected) in cases {
            assert_eq!(q.matches(&doc), expected, "{name}");
        }
        assert_eq!(
            q.fields(),
            [
                "data_stream.dataset",
                "event.action",
                "event.outcome",
                "azure.resource.name",
                "source.as.number"
            ]
        );
        assert_eq!(q.source(), SEED);
    }

    #[test]
    fn seed_rule_query_on_a_normalized_event() {
        use crate::event::{NormalizedEvent, Outcome};
        let q = Query::parse(SEED).unwrap();
        let mut ev = NormalizedEvent {
            event_action: Some("MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/WRITE".into()),
            event_outcome: Some(Outcome::Success),
            resource_name: Some("VM1/EXTENSIONS/CUSTOMSCRIPT".into()),
            source_as_number: Some(64500),
            ..Default::default()
        };
        assert!(q.matches(&ev));
        ev.source_as_number = Some(8075);
        assert!(!q.matches(&ev));
        ev.source_as_number = None;
        assert!(!q.matches(&ev));
    }

    #[test]
    fn multiline_query_from_a_rule_file() {
        let src = "data_stream.dataset:azure.activitylogs and\n    event.action:(\n        \"A\" or\n        \"B\"\n    ) and event.outcome:(Success or success)\n";
        let q = Query::parse(src).unwrap();
        let doc = json!({"data_stream": {"dataset": "azure.activitylogs"}, "event": {"action": "B", "outcome": "success"}});
        assert!(q.matches(&doc));
    }

    fn err(query: &str) -> KqlError {
        match Query::parse(query) {
            Ok(q) => panic!("{query} should not parse, got {q:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn errors_name_the_construct_and_position() {
        let e = err("a:1 and n >= 5");
        assert_eq!(e.position(), 10);
        assert!(
            e.to_string()
                .contains("range queries (`>=`) are not supported"),
            "{e}"
        );
        assert!(err("n<5").message().contains("`<`"));
        assert!(err("n > 5").message().contains("`>`"));

        let e = err("a:1 and user:{ name:x }");
        assert_eq!(e.position(), 13);
        assert!(e.message().contains("nested-field"), "{e}");

        let e = err("a:(x or y");
        assert_eq!(e.position(), 9);
        assert!(
            e.message()
                .contains("expected `)` to close the `(` at byte 2"),
            "{e}"
        );
        let e = err("(a:x");
        assert!(e.message().contains("`(` at byte 0"), "{e}");
        let e = err("a:x)");
        assert_eq!(e.position(), 3);
        assert!(e.to_string().contains("no matching `(`"), "{e}");

        for empty in ["", "   ", "\n\t"] {
            assert!(err(empty).message().contains("empty"), "{empty:?}");
        }

        let e = err("a:1 and foo");
        assert_eq!(e.position(), 8);
        assert!(e.message().contains("free-text"), "{e}");
        assert!(err("*").message().contains("free-text"));
        assert!(err("\"quoted words\"").message().contains("free-text"));

        let e = err("a:x or y");
        assert!(e.message().contains("`y` has no field"), "{e}");
        assert!(e.hint_text().unwrap().contains("field:(a or b)"));

        assert!(err("a*:x").message().contains("wildcard field names"));
        assert!(err("a:null").message().contains("null"));
        assert!(Query::parse("a:\"null\"").is_ok());
        assert!(err("\"\":x").message().contains("field name is empty"));

        assert!(err("a:\"open").message().contains("unterminated"));
        assert!(err(r#"a:x\y"#).message().contains("not an escape"));
        assert!(err(r#"a:\ud800"#).message().contains("surrogate"));
        assert!(err("a:").message().contains("expected a value"));
        assert!(err("a:1 and ").message().contains("expected a field name"));
        assert!(err("not not a:1")
            .message()
            .contains("expected a field name"));
        assert!(err("a:not x")
            .hint_text()
            .unwrap()
            .contains("field:(not value)"));
        assert!(err("a:b c:d").hint_text().unwrap().contains("quoted"));

        // Typed fields of the normalized event.
        assert!(err("source.as.number:abc")
            .message()
            .contains("not a number"));
        assert!(err("source.as.number:80*").message().contains("wildcards"));
        assert!(err("source.ip:foo").message().contains("neither an IP"));
        assert!(err("source.ip:10.*").hint_text().unwrap().contains("CIDR"));
        assert!(Query::parse("source.ip:* and source.as.number:(1 or 2.0)").is_ok());

        let deep = format!("{}a:1{}", "(".repeat(200), ")".repeat(200));
        assert!(err(&deep).message().contains("nests deeper"));

        // Display carries position, message and hint on one line.
        let shown = err("a:x or y").to_string();
        assert!(shown.starts_with("at byte 7: "), "{shown}");
        assert!(shown.contains("(hint: "), "{shown}");
        assert!(!shown.contains('\n'));
    }

    #[test]
    fn kibana_keyword_lookahead_quirks() {
        // `not ` ends an unquoted literal even inside a word, as in Kibana's
        // grammar, so this is a syntax error there and here.
        assert!(Query::parse("a:cannot x").is_err());
        // `and` without a space after it is part of the value.
        let q = Query::parse("a:b and").unwrap();
        assert!(q.matches(&json!({"a": "b and"})));
        // `or` glued to a word is not a keyword.
        let q = Query::parse("a:color").unwrap();
        assert!(q.matches(&json!({"a": "color"})));
    }

    #[test]
    fn fields_are_listed_once_in_order() {
        let q = Query::parse("b:1 and (a:2 or b:3) and not c:*").unwrap();
        assert_eq!(q.fields(), ["b", "a", "c"]);
    }

    fn kql_fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("and".to_string()),
            Just("or".to_string()),
            Just("not".to_string()),
            Just("(".to_string()),
            Just(")".to_string()),
            Just(":".to_string()),
            Just("*".to_string()),
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("{".to_string()),
            Just(">=".to_string()),
            Just("\\u00".to_string()),
            "[a-z.]{1,6}",
            "[0-9]{1,5}",
            "\\PC{0,3}",
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,60}") {
            let _ = Query::parse(&s);
        }

        #[test]
        fn parse_and_match_never_panic_on_kql_like_input(
            parts in prop::collection::vec(kql_fragment(), 0..24),
            seps in prop::collection::vec(prop_oneof![Just(""), Just(" "), Just("  ")], 24),
        ) {
            let mut s = String::new();
            for (p, sep) in parts.iter().zip(seps.iter()) {
                s.push_str(p);
                s.push_str(sep);
            }
            if let Ok(q) = Query::parse(&s) {
                let doc = json!({"a": ["x", 1, true, ""], "source": {"ip": "10.0.0.1", "as": {"number": 1}}});
                let _ = q.matches(&doc);
            }
        }
    }
}
