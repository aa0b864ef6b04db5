//! Keeps `docs/CONTRACT.md` and the conformance suite in step.
//!
//! Reads the contract and `src/conformance/*.rs` as text and fails, naming
//! the rule or case, when:
//! - a case (or any comment in the suite, the README, `src/service.rs` or
//!   `src/lib.rs`) cites a rule number the contract lacks;
//! - a rule names no case;
//! - a rule names a case that is not a `pub async fn` of the suite, or a test
//!   outside it (`tests/file.rs::name`) that does not exist;
//! - a `pub async fn` case cites no rule;
//! - a rule names a case whose doc comment does not cite it, or a case cites
//!   a rule that does not name it;
//! - rule numbers repeat or skip, or an old `§` citation is left.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// One numbered rule of the contract.
#[derive(Debug, Default)]
struct Rule {
    /// Suite cases its "Checked by:" paragraph names.
    cases: BTreeSet<String>,
    /// Tests outside the suite it names, as (`tests/file.rs`, function).
    external: BTreeSet<(String, String)>,
}

/// Rule numbers cited in `text`: every `C<digits>` standing as a word.
fn cited_rules(text: &str) -> BTreeSet<u32> {
    let bytes = text.as_bytes();
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = BTreeSet::new();
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'C' || (i > 0 && is_word(bytes[i - 1])) {
            continue;
        }
        let digits = bytes[i + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let end = i + 1 + digits;
        if digits == 0 || (end < bytes.len() && is_word(bytes[end])) {
            continue;
        }
        if let Ok(n) = text[i + 1..end].parse() {
            out.insert(n);
        }
    }
    out
}

/// The text between backticks on `text`, in order.
fn backticked(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// Parses the contract: rules start at `### C<n>.` headings and end at the
/// next heading; a rule's cases are the backticked names in its paragraph
/// that starts with `Checked by:`. Problems go to `errors`.
fn parse_contract(contract: &str, errors: &mut Vec<String>) -> BTreeMap<u32, Rule> {
    let mut rules: BTreeMap<u32, Rule> = BTreeMap::new();
    let mut order = Vec::new();
    let mut current: Option<u32> = None;
    let mut in_checked_by = false;
    for line in contract.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            in_checked_by = false;
            current = None;
            if let Some(rest) = trimmed.strip_prefix("### C") {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                match digits.parse::<u32>() {
                    Ok(n) => {
                        if rules.insert(n, Rule::default()).is_some() {
                            errors.push(format!("contract: rule C{n} is numbered twice"));
                        }
                        order.push(n);
                        current = Some(n);
                    }
                    Err(_) => errors.push(format!("contract: unnumbered rule heading {trimmed:?}")),
                }
            }
            continue;
        }
        if trimmed.is_empty() {
            in_checked_by = false;
            continue;
        }
        if trimmed.starts_with("Checked by:") {
            in_checked_by = true;
        }
        let (Some(n), true) = (current, in_checked_by) else {
            continue;
        };
        let rule = rules.get_mut(&n).expect("current rule exists");
        for name in backticked(line) {
            if is_identifier(name) {
                rule.cases.insert(name.to_string());
            } else if let Some((file, function)) = name.split_once("::") {
                if file.starts_with("tests/") && file.ends_with(".rs") && is_identifier(function) {
                    rule.external
                        .insert((file.to_string(), function.to_string()));
                }
            }
        }
    }
    for (i, n) in order.iter().enumerate() {
        let expected = u32::try_from(i + 1).expect("few rules");
        if *n != expected {
            errors.push(format!(
                "contract: rule C{n} stands where C{expected} should (rules run C1, C2, … in order)"
            ));
            break;
        }
    }
    rules
}

/// The suite's cases: every `pub async fn` with the rules its doc comment
/// (the `///` lines just above it) cites.
fn parse_cases(file: &str, source: &str) -> BTreeMap<String, (String, BTreeSet<u32>)> {
    let lines: Vec<&str> = source.lines().collect();
    let mut cases = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("pub async fn ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let mut doc = Vec::new();
        for above in lines[..i].iter().rev() {
            let above = above.trim();
            if let Some(text) = above.strip_prefix("///") {
                doc.push(text);
            } else if !above.starts_with("#[") {
                break;
            }
        }
        doc.reverse();
        cases.insert(name, (file.to_string(), cited_rules(&doc.join("\n"))));
    }
    cases
}

/// Every rule number cited in a comment line (`//`, `///`, `//!`) of `source`.
fn cited_in_comments(source: &str) -> BTreeSet<u32> {
    source
        .lines()
        .filter_map(|l| l.split_once("//").map(|(_, comment)| comment))
        .flat_map(cited_rules)
        .collect()
}

/// Checks a contract against the suite's sources (`(file, text)` pairs) and
/// other cited documents; `read` reads a repository file for the external
/// tests rules name. Returns one message per problem.
fn check(
    contract: &str,
    suite: &[(String, String)],
    other_citing: &[(String, String)],
    read: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let mut errors = Vec::new();
    let rules = parse_contract(contract, &mut errors);
    if rules.is_empty() {
        errors.push("contract: no `### C<n>.` rule headings found".into());
    }
    // Spelled in pieces so that a search for citations of files outside the
    // repository does not find this check itself.
    for forbidden in [concat!("DESIGN", ".md"), concat!("..", "/shared")] {
        if contract.contains(forbidden) {
            errors.push(format!(
                "contract: cites {forbidden}, which is not in this repository"
            ));
        }
    }

    let mut cases = BTreeMap::new();
    for (file, source) in suite {
        for (n, line) in source.lines().enumerate() {
            if line.contains('§') {
                errors.push(format!(
                    "{file}:{}: old `§` citation; cite a C-number of docs/CONTRACT.md",
                    n + 1
                ));
            }
        }
        for cited in cited_in_comments(source) {
            if !rules.contains_key(&cited) {
                errors.push(format!(
                    "{file}: cites C{cited}, which docs/CONTRACT.md lacks"
                ));
            }
        }
        cases.extend(parse_cases(file, source));
    }
    for (file, text) in other_citing {
        for cited in cited_rules(text) {
            if !rules.contains_key(&cited) {
                errors.push(format!(
                    "{file}: cites C{cited}, which docs/CONTRACT.md lacks"
                ));
            }
        }
    }

    // Rules -> cases.
    for (n, rule) in &rules {
        if rule.cases.is_empty() && rule.external.is_empty() {
            errors.push(format!("contract: rule C{n} names no case (`Checked by:`)"));
        }
        for case in &rule.cases {
            match cases.get(case) {
                None => errors.push(format!(
                    "contract: rule C{n} names `{case}`, which is not a `pub async fn` in src/conformance/"
                )),
                Some((file, cited)) if !cited.contains(n) => errors.push(format!(
                    "{file}: case `{case}` does not cite C{n}, which names it"
                )),
                Some(_) => {}
            }
        }
        for (file, function) in &rule.external {
            let exists = read(file).is_some_and(|text| {
                text.contains(&format!("fn {function}("))
                    || text.contains(&format!("fn {function}<"))
            });
            if !exists {
                errors.push(format!(
                    "contract: rule C{n} names `{file}::{function}`, which does not exist"
                ));
            }
        }
    }

    // Cases -> the macro every provider's suite is expanded from.
    match suite
        .iter()
        .find_map(|(file, text)| macro_cases(text).map(|listed| (file, listed)))
    {
        None => errors.push("src/conformance: no `macro_rules! conformance_tests` found".into()),
        Some((macro_file, listed)) => {
            for (case, (file, _)) in &cases {
                if !listed.contains(case.as_str()) {
                    errors.push(format!(
                        "{file}: case `{case}` is not listed in `conformance_tests!` ({macro_file}), so no provider runs it"
                    ));
                }
            }
        }
    }

    // Cases -> rules.
    for (case, (file, cited)) in &cases {
        if cited.is_empty() {
            errors.push(format!(
                "{file}: case `{case}` cites no rule of docs/CONTRACT.md"
            ));
        }
        for n in cited {
            if rules.get(n).is_some_and(|rule| !rule.cases.contains(case)) {
                errors.push(format!(
                    "{file}: case `{case}` cites C{n}, but C{n} does not name it"
                ));
            }
        }
    }
    errors
}

/// The case names `conformance_tests!` lists (identifiers followed by a
/// comma in its body), or `None` when `source` does not define it.
fn macro_cases(source: &str) -> Option<BTreeSet<&str>> {
    let start = source.find("macro_rules! conformance_tests")?;
    let body = &source[start..];
    let end = body[1..].find("macro_rules!").map_or(body.len(), |i| i + 1);
    Some(
        body[..end]
            .split(|c: char| c.is_whitespace() || c == ';')
            .filter_map(|word| word.strip_suffix(','))
            .filter(|word| is_identifier(word))
            .collect(),
    )
}

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read_repository_file(relative: &str) -> Option<String> {
    fs::read_to_string(repository().join(relative)).ok()
}

#[test]
fn contract_and_conformance_suite_agree() {
    let contract = read_repository_file("docs/CONTRACT.md").expect("docs/CONTRACT.md");
    let mut suite = Vec::new();
    let dir = repository().join("src/conformance");
    let mut paths: Vec<_> = fs::read_dir(&dir)
        .expect("src/conformance")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .collect();
    paths.sort();
    for path in paths {
        let name = format!(
            "src/conformance/{}",
            path.file_name().expect("file name").to_string_lossy()
        );
        suite.push((name, fs::read_to_string(&path).expect("readable source")));
    }
    assert!(suite.len() >= 2, "expected mod.rs and fleet.rs in {dir:?}");
    let others: Vec<(String, String)> = ["README.md", "src/service.rs", "src/lib.rs"]
        .into_iter()
        .map(|file| {
            let text = read_repository_file(file).unwrap_or_else(|| panic!("{file}"));
            (file.to_string(), text)
        })
        .collect();

    let errors = check(&contract, &suite, &others, &read_repository_file);
    assert!(
        errors.is_empty(),
        "docs/CONTRACT.md and the conformance suite disagree:\n  {}",
        errors.join("\n  ")
    );
}

/// The checker itself: each kind of disagreement is reported by name.
#[test]
fn the_checker_reports_each_disagreement() {
    let contract = "\
### C1. One

Checked by: `case_a`, `tests/x.rs::helper`.

### C2. Two

No cases.

### C3. Three

Checked by: `no_such_case`, `tests/x.rs::missing`.

### C4. Four

Checked by: `case_b`.
";
    let suite = vec![(
        "src/conformance/mod.rs".to_string(),
        "\
/// C1, C9: first.
pub async fn case_a() {}

/// Nothing cited.
pub async fn case_b() {}

/// §3.1: old.
#[doc(hidden)]
pub async fn case_c() {}

async fn private_helper() {}

macro_rules! conformance_tests {
    ($backend:expr) => {
        cases!($backend;
            case_a,
            case_b,
        );
    };
}
"
        .to_string(),
    )];
    let others = vec![("README.md".to_string(), "see C7 and C1".to_string())];
    let read = |file: &str| (file == "tests/x.rs").then(|| "fn helper() {}".to_string());
    let errors = check(contract, &suite, &others, &read).join("\n");
    for expected in [
        "mod.rs: cites C9, which docs/CONTRACT.md lacks",
        "README.md: cites C7, which docs/CONTRACT.md lacks",
        "rule C2 names no case",
        "rule C3 names `no_such_case`, which is not a `pub async fn`",
        "rule C3 names `tests/x.rs::missing`, which does not exist",
        "case `case_b` cites no rule",
        "case `case_c` cites no rule",
        "case `case_b` does not cite C4, which names it",
        "old `§` citation",
        "case `case_c` is not listed in `conformance_tests!`",
    ] {
        assert!(
            errors.contains(expected),
            "missing {expected:?} in:\n{errors}"
        );
    }
    assert!(!errors.contains("private_helper"), "{errors}");
    assert!(!errors.contains("tests/x.rs::helper"), "{errors}");
    assert!(!errors.contains("`case_a` is not listed"), "{errors}");

    let renumbered = "### C1. A\n\nChecked by: `case_a`.\n\n### C1. B\n\nChecked by: `case_a`.\n\n### C3. C\n\nChecked by: `case_a`.\n";
    let mut errors = Vec::new();
    parse_contract(renumbered, &mut errors);
    let errors = errors.join("\n");
    assert!(errors.contains("rule C1 is numbered twice"), "{errors}");
}
