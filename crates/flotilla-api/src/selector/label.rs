//! Label selectors: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, joined by
//! commas (upstream `labels.Parse`).

use std::collections::BTreeMap;

use crate::error::{ApiError, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operator {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelRequirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

/// Every requirement must hold (an empty selector matches everything).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<LabelRequirement>,
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self> {
        let mut parser = Parser { chars: text.chars().collect(), pos: 0, text };
        let mut requirements = Vec::new();
        parser.skip_spaces();
        if parser.at_end() {
            return Ok(LabelSelector::default());
        }
        loop {
            requirements.push(parser.requirement()?);
            parser.skip_spaces();
            if parser.at_end() {
                break;
            }
            parser.expect(',')?;
        }
        Ok(LabelSelector { requirements })
    }

    /// The selector of a `metav1.LabelSelector` (matchLabels and matchExpressions).
    pub fn from_api(selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> Result<Self> {
        let mut requirements: Vec<LabelRequirement> = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| LabelRequirement { key: k.clone(), operator: Operator::Equals, values: vec![v.clone()] })
            .collect();
        for expr in selector.match_expressions.iter().flatten() {
            let values = expr.values.clone().unwrap_or_default();
            let operator = match expr.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(ApiError::bad_request(format!("{other:?} is not a valid label selector operator")));
                }
            };
            requirements.push(LabelRequirement { key: expr.key.clone(), operator, values });
        }
        Ok(LabelSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels.get(&r.key).map(String::as_str)))
    }

    /// Matches the `metadata.labels` of a JSON object.
    pub fn matches_object(&self, object: &serde_json::Value) -> bool {
        if self.is_empty() {
            return true;
        }
        let labels = object.pointer("/metadata/labels").and_then(|l| l.as_object());
        self.requirements.iter().all(|r| {
            let value = labels.and_then(|l| l.get(&r.key)).and_then(|v| v.as_str());
            r.matches(value)
        })
    }
}

impl LabelRequirement {
    fn matches(&self, value: Option<&str>) -> bool {
        match self.operator {
            Operator::Equals | Operator::In => value.is_some_and(|v| self.values.iter().any(|w| w == v)),
            Operator::NotEquals | Operator::NotIn => value.is_none_or(|v| self.values.iter().all(|w| w != v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r.operator {
                Operator::Equals => format!("{}={}", r.key, r.values[0]),
                Operator::NotEquals => format!("{}!={}", r.key, r.values[0]),
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

struct Parser<'a> {
    chars: Vec<char>,
    pos: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn error(&self, what: &str) -> ApiError {
        ApiError::bad_request(format!("unable to parse requirement: {what} in label selector {:?}", self.text))
    }

    fn expect(&mut self, c: char) -> Result<()> {
        self.skip_spaces();
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected '{c}'")))
        }
    }

    /// A key or value: anything up to a separator.
    fn word(&mut self) -> String {
        self.skip_spaces();
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_whitespace() || matches!(c, ',' | '=' | '!' | '(' | ')') {
                break;
            }
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn requirement(&mut self) -> Result<LabelRequirement> {
        self.skip_spaces();
        if self.peek() == Some('!') {
            self.pos += 1;
            let key = self.word();
            if key.is_empty() {
                return Err(self.error("expected a key after '!'"));
            }
            validate_key(&key).map_err(|e| self.error(&e))?;
            return Ok(LabelRequirement { key, operator: Operator::DoesNotExist, values: vec![] });
        }
        let key = self.word();
        if key.is_empty() {
            return Err(self.error("expected a key"));
        }
        validate_key(&key).map_err(|e| self.error(&e))?;
        self.skip_spaces();
        let operator = match (self.peek(), self.chars.get(self.pos + 1).copied()) {
            (None | Some(','), _) => return Ok(LabelRequirement { key, operator: Operator::Exists, values: vec![] }),
            (Some('='), Some('=')) => {
                self.pos += 2;
                Operator::Equals
            }
            (Some('='), _) => {
                self.pos += 1;
                Operator::Equals
            }
            (Some('!'), Some('=')) => {
                self.pos += 2;
                Operator::NotEquals
            }
            _ => {
                let word = self.word();
                match word.as_str() {
                    "in" => Operator::In,
                    "notin" => Operator::NotIn,
                    other => return Err(self.error(&format!("unknown operator {other:?}"))),
                }
            }
        };
        let values = match operator {
            Operator::In | Operator::NotIn => {
                self.expect('(')?;
                let mut values = Vec::new();
                loop {
                    let value = self.word();
                    validate_value(&value).map_err(|e| self.error(&e))?;
                    values.push(value);
                    self.skip_spaces();
                    match self.peek() {
                        Some(',') => self.pos += 1,
                        Some(')') => {
                            self.pos += 1;
                            break;
                        }
                        _ => return Err(self.error("expected ',' or ')'")),
                    }
                }
                values
            }
            _ => {
                let value = self.word();
                validate_value(&value).map_err(|e| self.error(&e))?;
                vec![value]
            }
        };
        Ok(LabelRequirement { key, operator, values })
    }
}

fn validate_key(key: &str) -> std::result::Result<(), String> {
    crate::validation::qualified_name(key).map_err(|e| format!("invalid label key {key:?}: {e}"))
}

fn validate_value(value: &str) -> std::result::Result<(), String> {
    crate::validation::label_value(value).map_err(|e| format!("invalid label value {value:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_operator_parses_and_matches() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        for (selector, expected) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=web,tier=back", false),
            ("app=web, tier in (front)", true),
            ("example.com/role", false),
        ] {
            assert_eq!(LabelSelector::parse(selector).unwrap().matches(&l), expected, "{selector}");
        }
    }

    #[test]
    fn malformed_selectors_are_bad_requests() {
        for bad in ["app in web", "a=b=c", "app notin (", "=x", "Bad Key=x", "app=a b"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_round_trips() {
        let s = LabelSelector::parse("a=b,c!=d,e in (f,g),h,!i").unwrap();
        assert_eq!(s.to_string(), "a=b,c!=d,e in (f,g),h,!i");
        assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s);
    }
}
