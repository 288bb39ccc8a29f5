//! Issue #20: programs not written here, run as users run them, through a
//! wrapper: Debian's `fzf` (a stripped Go binary) filtering a generated file
//! under `sh -c`, and Roslyn, the C# compiler, hosted by Python (pythonnet on
//! .NET 8, `tests/fixtures/dotnet/csc.py`) compiling a generated file of
//! 3,000 classes. Each spends most of its time in its own code; at least 30%
//! of its samples must be there, named.

use std::{path::Path, process::Command};

use crossprof_tests::{
    Dotnet, FoldedStack, Roslyn, out_dir, read_folded, read_summary, record_target, workspace_root,
};

/// Of the samples of the processes named `comm` (at least `min`), >= 30% in
/// frames starting with `own`: named, in the program's own code.
fn assert_in_own_code(stacks: &[FoldedStack], comm: &str, own: &str, min: u64) {
    let (mine, all) = crossprof_tests::count_where(stacks, comm, |s| {
        s.frames.iter().any(|f| f.starts_with(own))
    });
    println!("{comm}: {mine} of {all} samples in {own}...");
    assert!(all >= min, "only {all} samples of {comm}: {stacks:#?}");
    assert!(
        mine * 100 >= all * 30,
        "{own}... in {mine} of {all} samples of {comm}:\n{stacks:#?}"
    );
}

#[test]
fn fzf_through_a_script_is_named_in_its_own_code() {
    let fzf = Path::new("/usr/bin/fzf");
    assert!(
        fzf.exists(),
        "no /usr/bin/fzf: cargo xtask bootstrap installs Debian's fzf"
    );
    let dir = out_dir("real_fzf");
    // 1.5 million lines of words to filter: a few seconds of fzf's matcher.
    let input = dir.join("input.txt");
    let mut text = String::with_capacity(60 << 20);
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    ];
    for i in 0..1_500_000u64 {
        let w = |k: u64| words[((i * 2_654_435_761 + k * 97) % 8) as usize];
        text.push_str(&format!("{}/{}/{}-{i}.txt\n", w(1), w(2), w(3)));
    }
    std::fs::write(&input, text).unwrap();
    let script = dir.join("filter.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nfor q in 'alchdel' 'brgofx' 'ecoho12'; do\n  /usr/bin/fzf --filter \"$q\" < {} | wc -l\ndone\n",
            input.display()
        ),
    )
    .unwrap();
    let mut target = Command::new("sh");
    target.arg(&script);
    let out = dir.join("profile");
    let run = record_target(&out, &["--freq", "499"], &target);
    assert!(run.status.success(), "{}", run.stderr);
    assert_in_own_code(&read_folded(&out), "fzf", "github.com/junegunn/fzf", 200);
}

#[test]
fn roslyn_hosted_by_python_compiling_a_large_file_is_named_in_its_own_code() {
    let runtime = Dotnet::Net8;
    let dir = out_dir("real_roslyn");
    // 3,000 classes, each with methods that call each other: seconds of
    // binding and emitting.
    let src = dir.join("big.cs");
    let mut code = String::from("using System;\nnamespace Gen {\n");
    for c in 0..3000 {
        code.push_str(&format!(
            "class C{c} {{\n  int f; string s = \"{c}\";\n  public int A(int x) {{ return x * {c} + f; }}\n  public string B(int y) {{ return s + A(y).ToString() + (y > 3 ? \"a\" : \"b\"); }}\n  public static int S(int z) {{ var o = new C{c}(); int t = 0; for (int i = 0; i < z; i++) t += o.A(i) + o.B(i).Length; return t; }}\n}}\n"
        ));
    }
    code.push_str(
        "static class Program { static void Main() { Console.WriteLine(C1.S(3)); } }\n}\n",
    );
    std::fs::write(&src, code).unwrap();
    let host = runtime.host();
    let mut target = Command::new("python3");
    target
        .arg(workspace_root().join("tests/fixtures/dotnet/csc.py"))
        .arg(Roslyn::dir())
        .arg(host.parent().expect("the host is in a folder"))
        .arg(runtime.version())
        .arg(&src)
        .arg(dir.join("big.dll"))
        .env("PYTHONPATH", runtime.root());
    let out = dir.join("profile");
    let run = record_target(&out, &["--freq", "499"], &target);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        dir.join("big.dll").exists(),
        "Roslyn wrote no assembly: {}",
        run.stderr
    );
    assert_in_own_code(&read_folded(&out), "python3", "Microsoft.CodeAnalysis", 500);
    // Its stacks are whole: Mono's compiler on CoreCLR read 62.4% before
    // threads' roots were judged by the unwinder (99.3% measured), and
    // summary.json says how the rest ended.
    let summary = read_summary(&out);
    let python = summary["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["comm"] == "python3")
        .expect("python3 in summary.json");
    let complete = python["stacks_complete"].as_f64().unwrap_or(0.0);
    let ends = &python["user_stack_ends"];
    assert!(complete >= 0.95, "stacks complete {complete}: {ends}");
    let counted: u64 = ends
        .as_object()
        .expect("user_stack_ends")
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    assert!(
        counted * 100 >= python["samples"].as_u64().unwrap() * 95,
        "{counted} stack ends for {python}"
    );
}
