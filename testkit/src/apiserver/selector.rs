//! `labelSelector` and `fieldSelector` parsing and matching, after the real server's grammar.

use serde_json::Value;

use super::resources::ResourceType;

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelReq {
    /// `key`
    Exists(String),
    /// `!key`
    NotExists(String),
    /// `key=v`, `key==v`, `key in (v, …)`
    In(String, Vec<String>),
    /// `key!=v`, `key notin (v, …)` (also true when the label is missing)
    NotIn(String, Vec<String>),
    /// `key>n`
    Gt(String, i64),
    /// `key<n`
    Lt(String, i64),
}

/// A parsed label selector: all requirements must hold. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<LabelReq>);

impl LabelSelector {
    /// Parses `a=b,c!=d,e,!f,g in (x,y),h notin (z)`.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut p = Parser { s: s.as_bytes(), i: 0 };
        let mut reqs = Vec::new();
        p.ws();
        if p.eof() {
            return Ok(LabelSelector(reqs));
        }
        loop {
            reqs.push(p.requirement()?);
            p.ws();
            if p.eof() {
                break;
            }
            if !p.eat(b',') {
                return Err(format!(
                    "unable to parse requirement: found '{}', expected: ','",
                    p.rest()
                ));
            }
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
            LabelReq::Gt(k, n) => get(k).and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v > *n),
            LabelReq::Lt(k, n) => get(k).and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v < *n),
        })
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn eof(&self) -> bool {
        self.i >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn rest(&self) -> String {
        String::from_utf8_lossy(&self.s[self.i.min(self.s.len())..]).into_owned()
    }
    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn eat_str(&mut self, t: &str) -> bool {
        if self.s[self.i..].starts_with(t.as_bytes()) {
            self.i += t.len();
            true
        } else {
            false
        }
    }
    /// A key or value: label characters (`[A-Za-z0-9._/-]`).
    fn word(&mut self) -> String {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || b"._-/".contains(&c))
        {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
    fn key(&mut self) -> Result<String, String> {
        self.ws();
        let k = self.word();
        if k.is_empty() {
            return Err(format!(
                "unable to parse requirement: found '{}', expected: identifier",
                self.rest()
            ));
        }
        validate_key(&k)?;
        Ok(k)
    }
    fn value(&mut self) -> Result<String, String> {
        self.ws();
        let v = self.word();
        if v.len() > 63 || v.contains('/') {
            return Err(format!("invalid label value: {v:?}"));
        }
        Ok(v)
    }
    fn set(&mut self) -> Result<Vec<String>, String> {
        self.ws();
        if !self.eat(b'(') {
            return Err(format!(
                "unable to parse requirement: found '{}', expected: '('",
                self.rest()
            ));
        }
        let mut vs = Vec::new();
        loop {
            vs.push(self.value()?);
            self.ws();
            if self.eat(b')') {
                return Ok(vs);
            }
            if !self.eat(b',') {
                return Err(format!(
                    "unable to parse requirement: found '{}', expected: ',' or ')'",
                    self.rest()
                ));
            }
        }
    }
    fn requirement(&mut self) -> Result<LabelReq, String> {
        self.ws();
        if self.eat(b'!') {
            return Ok(LabelReq::NotExists(self.key()?));
        }
        let k = self.key()?;
        self.ws();
        if self.eof() || self.peek() == Some(b',') {
            return Ok(LabelReq::Exists(k));
        }
        if self.eat_str("==") || self.eat(b'=') {
            let v = self.value()?;
            return Ok(LabelReq::In(k, vec![v]));
        }
        if self.eat_str("!=") {
            let v = self.value()?;
            return Ok(LabelReq::NotIn(k, vec![v]));
        }
        if self.eat(b'>') || self.eat(b'<') {
            let gt = self.s[self.i - 1] == b'>';
            let v = self.value()?;
            let n = v
                .parse::<i64>()
                .map_err(|_| format!("for 'Gt', 'Lt' operators, the value must be an integer: {v:?}"))?;
            return Ok(if gt { LabelReq::Gt(k, n) } else { LabelReq::Lt(k, n) });
        }
        let save = self.i;
        let op = self.word();
        match op.as_str() {
            "in" => Ok(LabelReq::In(k, self.set()?)),
            "notin" => Ok(LabelReq::NotIn(k, self.set()?)),
            _ => {
                self.i = save;
                Err(format!(
                    "unable to parse requirement: found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    self.rest()
                ))
            }
        }
    }
}

fn validate_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253 && !p.contains('/'));
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(format!(
            "invalid label key {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ))
    }
}

/// One field requirement: `field=value` or `field!=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldReq {
    /// Dotted field path (`metadata.name`).
    pub field: String,
    /// Compared value.
    pub value: String,
    /// `!=` rather than `=`.
    pub negate: bool,
}

/// A parsed field selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldReq>);

impl FieldSelector {
    /// Parses `metadata.name=x,metadata.namespace!=y`, accepting only the labels the real server
    /// supports for this type.
    pub fn parse(s: &str, rt: &ResourceType) -> Result<FieldSelector, String> {
        let mut out = Vec::new();
        for term in split_unescaped(s, ',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (field, value, negate) = if let Some((f, v)) = split_op(term, "!=") {
                (f, v, true)
            } else if let Some((f, v)) = split_op(term, "==") {
                (f, v, false)
            } else if let Some((f, v)) = split_op(term, "=") {
                (f, v, false)
            } else {
                return Err(format!("invalid selector: '{s}'; can't understand '{term}'"));
            };
            let field = field.trim().to_owned();
            let supported =
                field == "metadata.name" || field == "metadata.namespace" || rt.field_labels.contains(&field.as_str());
            if !supported {
                return Err(format!("field label not supported: {field}"));
            }
            out.push(FieldReq {
                field,
                value: unescape(value.trim()),
                negate,
            });
        }
        Ok(FieldSelector(out))
    }

    /// Whether the object satisfies every requirement (missing fields compare as `""`).
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|r| {
            let path = if r.field == "source" {
                "source.component"
            } else {
                &r.field
            };
            let mut cur = Some(obj);
            for part in path.split('.') {
                cur = cur.and_then(|v| v.get(part));
            }
            let actual = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            };
            (actual == r.value) != r.negate
        })
    }
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut esc = false;
    for c in s.chars() {
        if esc {
            out.last_mut().expect("non-empty").extend(['\\', c]);
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else if c == sep {
            out.push(String::new());
        } else {
            out.last_mut().expect("non-empty").push(c);
        }
    }
    out
}

/// Splits at the first unescaped `op`.
fn split_op<'a>(term: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let b = term.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        if term[i..].starts_with(op) {
            return Some((&term[..i], &term[i + op.len()..]));
        }
        i += 1;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for c in s.chars() {
        if esc {
            out.push(c);
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{RESOURCES, by_name};
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({ "metadata": { "name": "a", "namespace": "ns", "labels": labels }, "spec": { "nodeName": "n1" } })
    }

    #[test]
    fn labels() {
        let o = obj(json!({ "app": "web", "tier": "fe", "n": "5" }));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app==web, tier != db"));
        assert!(!m("app=db"));
        assert!(m("app"));
        assert!(!m("!app"));
        assert!(m("!canary"));
        assert!(m("app in (web, api),tier notin (db)"));
        assert!(!m("app notin (web)"));
        assert!(m("missing notin (x)"));
        assert!(!m("missing in (x)"));
        assert!(m("n>4,n<6"));
        assert!(m("example.com/x!=y"));
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("app=web,").is_err());
        assert!(LabelSelector::parse("=x").is_err());
        assert!(LabelSelector::parse("a b").is_err());
        assert_eq!(
            LabelSelector::parse("a in (x,y)").unwrap().0,
            vec![LabelReq::In("a".into(), vec!["x".into(), "y".into()])]
        );
    }

    #[test]
    fn fields() {
        let pods = &RESOURCES[by_name("pods").unwrap()];
        let o = obj(json!({}));
        let m = |s: &str| FieldSelector::parse(s, pods).unwrap().matches(&o);
        assert!(m("metadata.name=a"));
        assert!(m("metadata.name==a,metadata.namespace=ns"));
        assert!(!m("metadata.name!=a"));
        assert!(m("spec.nodeName=n1"));
        assert!(m("status.phase="));
        let deploy = &RESOURCES[by_name("deployments").unwrap()];
        let err = FieldSelector::parse("spec.nodeName=n1", deploy).unwrap_err();
        assert_eq!(err, "field label not supported: spec.nodeName");
        assert!(FieldSelector::parse("metadata.name", pods).is_err());
    }
}
