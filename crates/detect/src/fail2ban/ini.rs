//! fail2ban's configuration files, read as fail2ban reads them: Python's
//! `ConfigParser` syntax (`=` or `:`, indented continuation lines, `#`/`;`
//! comments, `;` inline comments after whitespace, lower-cased option
//! names), `[INCLUDES]` `before`/`after` (relative to the including file,
//! each file followed by its `.local`), and `%(name)s` interpolation
//! including fail2ban's `%(section/option)s` and `known/` forms.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::Error;

/// The options of one section: name to value.
pub type Map = HashMap<String, String>;

/// The merged sections of a file and its includes.
#[derive(Debug, Default, Clone)]
pub struct Config {
    /// The `[DEFAULT]` section's options, seen by every section.
    pub defaults: Map,
    /// Every other section's own options, by section name.
    pub sections: HashMap<String, Map>,
    /// Own option names per section, in file order.
    order: HashMap<String, Vec<String>>,
}

struct Parsed {
    defaults: Map,
    sections: Vec<(String, Map, Vec<String>)>,
}

fn parse(text: &str, path: &Path) -> Result<Parsed, Error> {
    let mut defaults = Map::new();
    let mut sections: Vec<(String, Map, Vec<String>)> = Vec::new();
    // Current section index (None = DEFAULT), current option.
    let mut cur: Option<Option<usize>> = None;
    let mut opt: Option<String> = None;
    let mut values: HashMap<(Option<usize>, String), Vec<String>> = HashMap::new();
    let mut indent_level = 0usize;
    for (lineno, line) in text.lines().enumerate() {
        let mut comment_start: Option<usize> = None;
        let bytes: Vec<(usize, char)> = line.char_indices().collect();
        for (k, &(idx, ch)) in bytes.iter().enumerate() {
            if ch == ';' && (k == 0 || bytes[k - 1].1.is_whitespace()) {
                comment_start = Some(idx);
                break;
            }
        }
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.starts_with(';') {
            comment_start = Some(0);
        }
        let value = line[..comment_start.unwrap_or(line.len())].trim();
        if value.is_empty() {
            if comment_start.is_none()
                && let (Some(sec), Some(o)) = (cur, &opt)
                && let Some(v) = values.get_mut(&(sec, o.clone()))
            {
                v.push(String::new());
            }
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if let (Some(sec), Some(o)) = (cur, &opt)
            && indent > indent_level
        {
            values
                .get_mut(&(sec, o.clone()))
                .expect("option exists")
                .push(value.to_string());
            continue;
        }
        indent_level = indent;
        if value.starts_with('[') && value.ends_with(']') && value.len() > 2 {
            let name = &value[1..value.len() - 1];
            opt = None;
            if name == "DEFAULT" {
                cur = Some(None);
            } else if let Some(i) = sections.iter().position(|(n, _, _)| n == name) {
                cur = Some(Some(i));
            } else {
                sections.push((name.to_string(), Map::new(), Vec::new()));
                cur = Some(Some(sections.len() - 1));
            }
            continue;
        }
        let Some(sec) = cur else {
            return Err(Error::Config(format!(
                "{}:{}: an option before any [section]",
                path.display(),
                lineno + 1
            )));
        };
        let delim = value.find(['=', ':']).ok_or_else(|| {
            Error::Config(format!(
                "{}:{}: expected `name = value`, got {value:?}",
                path.display(),
                lineno + 1
            ))
        })?;
        let name = value[..delim].trim_end().to_lowercase();
        let v = value[delim + 1..].trim().to_string();
        if let Some(i) = sec
            && !sections[i].2.contains(&name)
        {
            sections[i].2.push(name.clone());
        }
        values.insert((sec, name.clone()), vec![v]);
        opt = Some(name);
    }
    for ((sec, name), v) in values {
        let joined = v.join("\n").trim_end().to_string();
        match sec {
            None => {
                defaults.insert(name, joined);
            }
            Some(i) => {
                sections[i].1.insert(name, joined);
            }
        }
    }
    Ok(Parsed { defaults, sections })
}

fn read_one(path: &Path) -> Result<Parsed, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    parse(&text, path)
}

/// `file` followed by `file.local` if that exists and is not listed.
fn with_local(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for f in files {
        out.push(f.clone());
        let local = f.with_extension("local");
        if !files.contains(&local) && local.is_file() {
            out.push(local);
        }
    }
    out
}

fn includes(files: &[PathBuf], seen: &[PathBuf], depth: usize) -> Result<Vec<PathBuf>, Error> {
    if depth > 16 {
        return Err(Error::Config("includes nested too deeply".into()));
    }
    let mut out = Vec::new();
    for f in with_local(files) {
        let parsed = match read_one(&f) {
            Ok(p) => p,
            Err(_) if seen.is_empty() && !f.exists() => continue,
            Err(e) => return Err(e),
        };
        let dir = f.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut before = Vec::new();
        let mut after = Vec::new();
        if let Some((_, inc, _)) = parsed.sections.iter().find(|(n, _, _)| n == "INCLUDES") {
            for (key, list) in [("before", &mut before), ("after", &mut after)] {
                if let Some(v) = inc.get(key) {
                    for r in v.split('\n').map(str::trim).filter(|r| !r.is_empty()) {
                        let p = if Path::new(r).is_absolute() {
                            PathBuf::from(r)
                        } else {
                            dir.join(r)
                        };
                        if seen.contains(&p) {
                            continue;
                        }
                        let mut s = seen.to_vec();
                        s.push(f.clone());
                        // A missing include is skipped, as fail2ban does.
                        if p.exists() {
                            list.extend(includes(&[p], &s, depth + 1)?);
                        } else if p.with_extension("local").exists() {
                            list.push(p.with_extension("local"));
                        }
                    }
                }
            }
        }
        out.extend(before);
        out.push(f);
        out.extend(after);
    }
    Ok(out)
}

impl Config {
    /// Reads a filter file with its `.d/*.conf`, `.local`, `.d/*.local`
    /// and includes.
    pub fn load(path: &Path) -> Result<Config, Error> {
        if !path.is_file() {
            return Err(Error::Config(format!(
                "{} is not a readable file",
                path.display()
            )));
        }
        let base = path.with_extension("");
        let mut files = vec![path.to_path_buf()];
        let d = PathBuf::from(format!("{}.d", base.display()));
        let glob = |ext: &str| -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = std::fs::read_dir(&d)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == ext))
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        files.extend(glob("conf"));
        let local = base.with_extension("local");
        if local.is_file() {
            files.push(local);
        }
        files.extend(glob("local"));
        let all = includes(&files, &[], 0)?;
        let mut cfg = Config::default();
        for f in all {
            let p = read_one(&f)?;
            cfg.defaults.extend(p.defaults);
            for (name, s, order) in p.sections {
                match cfg.sections.get_mut(&name) {
                    Some(existing) => {
                        let known: Map = existing
                            .iter()
                            .filter(|(k, _)| s.contains_key(*k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        cfg.sections
                            .entry(format!("KNOWN/{name}"))
                            .or_default()
                            .extend(known);
                        let existing = cfg.sections.get_mut(&name).expect("present");
                        existing.extend(s);
                        let o = cfg.order.entry(name).or_default();
                        for k in order {
                            if !o.contains(&k) {
                                o.push(k);
                            }
                        }
                    }
                    None => {
                        cfg.sections.insert(name.clone(), s);
                        cfg.order.insert(name, order);
                    }
                }
            }
        }
        Ok(cfg)
    }

    /// True if the file or its includes have section `s`.
    pub fn has_section(&self, s: &str) -> bool {
        self.sections.contains_key(s)
    }

    /// The section's own options, in file order.
    pub fn own_options(&self, s: &str) -> Vec<String> {
        self.order.get(s).cloned().unwrap_or_default()
    }

    fn raw(&self, section: &str, option: &str, vars: &Map) -> Option<String> {
        vars.get(option)
            .or_else(|| self.sections.get(section).and_then(|s| s.get(option)))
            .or_else(|| self.defaults.get(option))
            .cloned()
    }

    /// `ConfigParser.get(section, option, vars=vars)`: `Ok(None)` if the
    /// option does not exist.
    pub fn get(&self, section: &str, option: &str, vars: &Map) -> Result<Option<String>, Error> {
        if !self.sections.contains_key(section) && section != "DEFAULT" {
            return Ok(None);
        }
        let option = option.to_lowercase();
        let Some(raw) = self.raw(section, &option, vars) else {
            return Ok(None);
        };
        let mut out = String::new();
        self.interpolate(section, &option, &raw, vars, &mut out, 0)?;
        Ok(Some(out))
    }

    /// fail2ban's `get_ex`: also understands `section/option` and
    /// `known/option` names.
    pub fn get_ex(&self, section: &str, option: &str, vars: &Map) -> Result<Option<String>, Error> {
        if let Some((sec, opt)) = option.split_once('/')
            && !sec.is_empty()
            && sec
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
            && !opt.is_empty()
            && !opt.contains(char::is_whitespace)
            && !opt.contains('>')
        {
            let secs: Vec<String> = match sec.to_lowercase().as_str() {
                "known" => vec![format!("KNOWN/{section}"), section.to_string()],
                "default" => vec!["DEFAULT".into()],
                _ => vec![sec.to_string()],
            };
            for s in secs {
                if let Some(v) = self.get(&s, opt, &Map::new())? {
                    return Ok(Some(v));
                }
            }
        }
        self.get(section, option, vars)
    }

    fn lookup(&self, section: &str, var: &str, vars: &Map) -> Option<String> {
        if var == "__name__" {
            return Some(section.to_string());
        }
        if let Some(v) = self.raw(section, var, vars) {
            return Some(v);
        }
        // %(section/option)s, %(known/option)s, %(default/option)s
        let (sec, opt) = var.split_once('/')?;
        match sec {
            "default" => self.defaults.get(opt).cloned(),
            "known" => self
                .sections
                .get(&format!("KNOWN/{section}"))
                .and_then(|s| s.get(opt))
                .or_else(|| self.defaults.get(opt))
                .cloned(),
            _ => {
                // Section names keep their case; options are lower-cased.
                let s = self
                    .sections
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(sec))
                    .map(|(_, s)| s)?;
                s.get(opt).or_else(|| self.defaults.get(opt)).cloned()
            }
        }
    }

    fn interpolate(
        &self,
        section: &str,
        option: &str,
        rest: &str,
        vars: &Map,
        out: &mut String,
        depth: usize,
    ) -> Result<(), Error> {
        if depth > 20 {
            return Err(Error::Config(format!(
                "[{section}] {option}: interpolation nested too deeply (a reference loop?)"
            )));
        }
        let mut rest = rest;
        while !rest.is_empty() {
            let Some(p) = rest.find('%') else {
                out.push_str(rest);
                return Ok(());
            };
            out.push_str(&rest[..p]);
            rest = &rest[p..];
            match rest.as_bytes().get(1) {
                Some(b'%') => {
                    out.push('%');
                    rest = &rest[2..];
                }
                Some(b'(') => {
                    let close = rest.find(")s").ok_or_else(|| {
                        Error::Config(format!(
                            "[{section}] {option}: bad interpolation in {rest:?}"
                        ))
                    })?;
                    let var = rest[2..close].to_lowercase();
                    if var.contains(')') {
                        return Err(Error::Config(format!(
                            "[{section}] {option}: bad interpolation in {rest:?}"
                        )));
                    }
                    rest = &rest[close + 2..];
                    let v = self.lookup(section, &var, vars).ok_or_else(|| {
                        Error::Config(format!(
                            "[{section}] {option}: %({var})s refers to an option that does not exist"
                        ))
                    })?;
                    if v.contains('%') {
                        self.interpolate(section, option, &v, vars, out, depth + 1)?;
                    } else {
                        out.push_str(&v);
                    }
                }
                _ => {
                    return Err(Error::Config(format!(
                        "[{section}] {option}: '%' must be followed by '%' or '(' in {rest:?}"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_configparser() {
        let p = parse(
            "[DEFAULT]\na = 1\n[Definition]\nFailRegex = ^x\n    ^y ; comment\n\n    # c\n    ^z\nk: v ;c\nq=a;b\n",
            Path::new("t"),
        )
        .unwrap();
        let d = &p.sections[0].1;
        assert_eq!(d["failregex"], "^x\n^y\n\n^z");
        assert_eq!(d["k"], "v");
        assert_eq!(d["q"], "a;b");
        assert_eq!(p.defaults["a"], "1");
    }

    #[test]
    fn includes_and_interpolation() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("filter.d");
        std::fs::create_dir(&f).unwrap();
        std::fs::write(
            f.join("common.conf"),
            "[DEFAULT]\n_daemon = \\S*\npre = <%(_daemon)s>\n[lt_file]\nx = file-x\n",
        )
        .unwrap();
        std::fs::write(
            f.join("t.conf"),
            "[INCLUDES]\nbefore = common.conf\n[DEFAULT]\n_daemon = sshd\n[Definition]\nfailregex = %(pre)s %(lt_file/x)s 100%%\n",
        )
        .unwrap();
        std::fs::write(
            f.join("t.local"),
            "[Definition]\nfailregex = %(known/failregex)s more\n",
        )
        .unwrap();
        let c = Config::load(&f.join("t.conf")).unwrap();
        let v = c
            .get("Definition", "failregex", &Map::new())
            .unwrap()
            .unwrap();
        assert_eq!(v, "<sshd> file-x 100% more");
        let vars: Map = [("_daemon".to_string(), "x".to_string())].into();
        let v = c.get("Definition", "failregex", &vars).unwrap().unwrap();
        assert_eq!(v, "<x> file-x 100% more");
    }
}
