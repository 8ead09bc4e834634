//! What people read: the text output of the main commands on a small, seeded registry,
//! pinned as insta snapshots (tests/it/snapshots/). Times and temporary paths are filtered;
//! everything else (ids, sizes, norms, cosines) is deterministic. After an intended change:
//! `INSTA_UPDATE=always cargo test --test it snapshots`, then review and commit the diff.

use std::fmt::Write as _;
use std::path::Path;

use crate::common::{cm, tiny_family};

fn text(root: &Path, tmp: &Path, args: &[&str]) -> String {
    let out = cm(root, args).assert().success();
    let o = out.get_output();
    let mut s = String::from_utf8(o.stdout.clone()).unwrap();
    let err = String::from_utf8(o.stderr.clone()).unwrap();
    if !err.is_empty() {
        s.push_str("--- stderr\n");
        s.push_str(&err);
    }
    s.replace(&tmp.display().to_string(), "[tmp]")
}

/// A literal string as a regular expression (insta's filters are regexes).
fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$#&-~".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

#[test]
fn the_main_commands_print_what_they_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let fam = tiny_family(&t.join("fam"), 2, Some(5));
    let root = t.join("reg");
    let p = |i: usize| fam[i].to_str().unwrap().to_owned();
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "[time]");
    settings.add_filter(r"\d{4}-\d\d-\d\d \d\d:\d\d(:\d\d)?", "[time]");
    settings.add_filter(&regex_escape(&t.display().to_string()), "[tmp]");
    settings.add_filter(&regex_escape(env!("CARGO_MANIFEST_DIR")), "[repo]");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        let mut all = String::new();
        let mut run = |args: &[&str]| {
            let _ = writeln!(all, "$ crossmerge {}", args.join(" "));
            all.push_str(&text(&root, t, args));
            all.push('\n');
        };
        run(&["register", &p(0), "--name", "xlmr-base", "--kind", "base"]);
        run(&[
            "register",
            &p(1),
            "--name",
            "xlmr-pos-en",
            "--kind",
            "task",
            "--task",
            "pos",
            "--language",
            "en",
            "--base",
            "xlmr-base",
            "--tag",
            "seed=1",
        ]);
        run(&[
            "register",
            &p(2),
            "--name",
            "xlmr-mlm-es",
            "--kind",
            "language",
            "--language",
            "es",
            "--base",
            "xlmr-base",
        ]);
        run(&["list"]);
        run(&["show", "xlmr-pos-en"]);
        run(&[
            "derive",
            "task",
            "--from",
            "xlmr-pos-en",
            "--name",
            "task/pos-en",
        ]);
        run(&[
            "derive",
            "language",
            "--from",
            "xlmr-mlm-es",
            "--name",
            "language/es",
        ]);
        run(&["list", "--vectors"]);
        run(&["compare", "task/pos-en", "language/es", "--by", "layer"]);
        run(&["diff", "xlmr-base", "xlmr-pos-en"]);
        let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/seed-study-pos-es.toml");
        run(&["merge", recipe.to_str().unwrap()]);
        run(&["show", "pos-en+es/es=0.3"]);
        run(&["du"]);
        run(&["verify"]);
        run(&["gc", "--dry-run"]);
        insta::assert_snapshot!("main_commands", all);
    });
}
