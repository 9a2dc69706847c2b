//! No two files of one crate import each other, directly or through others: the files of
//! every workspace crate form a layered graph, so a newcomer can read them bottom-up.
//!
//! # The rule
//!
//! Each crate root (`src/lib.rs`, `src/main.rs`) and the module files it declares
//! (`mod x;`, `#[path = "…"] mod x;`) are the nodes. File A has an edge to file B when
//! A names an item that is *defined* in B:
//!
//! - through a `use crate::…` / `use super::…` / `use self::…` / `use child::…` tree, or a
//!   path written in code (types, expressions, patterns, and paths inside macro calls
//!   such as `matches!(x, crate::a::B)`), after expanding the names a `use` brought in;
//! - a name reached through a re-export (`pub use inner::Thing;` in a `mod.rs`) counts
//!   as a use of the file that defines `Thing`, not of the file that re-exports it;
//! - a name that cannot be followed to its definition counts as a use of the module
//!   file where the search stopped.
//!
//! Not edges:
//!
//! - a module's file naming the files of its own descendants: a parent (`mod.rs`,
//!   `foo.rs` declaring `mod bar;`) assembles and re-exports its children. The reverse,
//!   a child using what its parent defines, is an edge;
//! - naming a module alone (`use crate::store;`): only the items used through it count;
//! - code under `#[cfg(test)]`: tests may reach anywhere.
//!
//! A cycle is a strongly connected set of two or more files; the test names each one
//! with a concrete loop of files and the item that makes each step.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// A module of a crate: where it lives and the names it holds.
#[derive(Default)]
struct Module {
    /// Its parent module (none for the crate root).
    parent: Option<usize>,
    /// The file it is written in (an inline `mod x { … }` shares its parent's file).
    file: usize,
    /// Its child modules by name.
    children: BTreeMap<String, usize>,
    /// The names of the items it defines.
    items: BTreeSet<String>,
    /// The names its `use` items bring in, with the path each names.
    aliases: BTreeMap<String, Vec<String>>,
    /// The paths of its glob imports (`use x::*`).
    globs: Vec<Vec<String>>,
}

/// One crate's module tree and files.
#[derive(Default)]
struct Crate {
    /// Module 0 is the crate root.
    modules: Vec<Module>,
    /// The files, relative to the crate's directory.
    files: Vec<PathBuf>,
    /// Each file's parsed syntax.
    syntax: Vec<syn::File>,
}

/// Where a path leads.
enum Target {
    /// A module itself.
    Module(usize),
    /// An item written in this file.
    File(usize),
}

/// Whether the attributes hold `#[cfg(test)]`.
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.meta.require_list().is_ok_and(|l| l.tokens.to_string() == "test")
    })
}

/// The value of a `#[path = "…"]` attribute.
fn path_attr(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| match &a.meta {
        syn::Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

/// The name an item defines, for the items a path can name.
fn item_name(item: &syn::Item) -> Option<String> {
    let ident = match item {
        syn::Item::Const(i) => &i.ident,
        syn::Item::Enum(i) => &i.ident,
        syn::Item::Fn(i) => &i.sig.ident,
        syn::Item::Static(i) => &i.ident,
        syn::Item::Struct(i) => &i.ident,
        syn::Item::Trait(i) => &i.ident,
        syn::Item::TraitAlias(i) => &i.ident,
        syn::Item::Type(i) => &i.ident,
        syn::Item::Union(i) => &i.ident,
        syn::Item::Macro(i) => i.ident.as_ref()?,
        _ => return None,
    };
    Some(ident.to_string())
}

/// A `use` tree flattened into (name brought in, path it names) pairs; a glob has no name.
fn flatten_use(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<(Option<String>, Vec<String>)>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            if name == "self" {
                out.push((prefix.last().cloned(), prefix.clone()));
            } else {
                let mut path = prefix.clone();
                path.push(name.clone());
                out.push((Some(name), path));
            }
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            let name = r.ident.to_string();
            if name != "self" {
                path.push(name);
            }
            out.push((Some(r.rename.to_string()), path));
        }
        syn::UseTree::Glob(_) => out.push((None, prefix.clone())),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten_use(t, prefix, out);
            }
        }
    }
}

impl Crate {
    /// Reads the crate whose root file is `root` (relative to `dir`), following its
    /// `mod` declarations.
    fn load(dir: &Path, root: &Path) -> Crate {
        let mut krate = Crate::default();
        krate.modules.push(Module::default());
        krate.load_file(dir, root, 0, true);
        krate
    }

    /// Reads one module file into module `module`.
    fn load_file(&mut self, dir: &Path, rel: &Path, module: usize, mod_rs: bool) {
        let text =
            std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{}: {e}", rel.display()));
        let syntax = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", rel.display()));
        let file = self.files.len();
        self.files.push(rel.to_path_buf());
        self.modules[module].file = file;
        // The directory a `mod x;` here looks in: next to a mod-rs file, else in `foo/`.
        let own_dir = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let child_dir =
            if mod_rs { own_dir.clone() } else { own_dir.join(rel.file_stem().expect("a file name")) };
        self.syntax.push(syntax.clone());
        self.load_items(dir, &syntax.items, module, file, &own_dir, &child_dir);
    }

    /// Records the items of one module (a file's top level or an inline `mod`).
    fn load_items(
        &mut self,
        dir: &Path,
        items: &[syn::Item],
        module: usize,
        file: usize,
        own_dir: &Path,
        child_dir: &Path,
    ) {
        for item in items {
            match item {
                syn::Item::Mod(m) if !is_test_only(&m.attrs) => {
                    let name = m.ident.to_string();
                    let child = self.modules.len();
                    self.modules.push(Module { parent: Some(module), file, ..Module::default() });
                    self.modules[module].children.insert(name.clone(), child);
                    match &m.content {
                        Some((_, inner)) => {
                            let inner_dir = child_dir.join(&name);
                            self.load_items(dir, inner, child, file, own_dir, &inner_dir);
                        }
                        None => {
                            let (rel, mod_rs) = match path_attr(&m.attrs) {
                                // rustc treats a `#[path]` file as a mod-rs file.
                                Some(p) => (own_dir.join(p), true),
                                None => {
                                    let flat = child_dir.join(format!("{name}.rs"));
                                    if dir.join(&flat).exists() {
                                        (flat, false)
                                    } else {
                                        (child_dir.join(&name).join("mod.rs"), true)
                                    }
                                }
                            };
                            self.load_file(dir, &rel, child, mod_rs);
                        }
                    }
                }
                syn::Item::Use(u) if !is_test_only(&u.attrs) => {
                    let mut out = Vec::new();
                    flatten_use(&u.tree, &mut Vec::new(), &mut out);
                    for (name, path) in out {
                        match name {
                            Some(name) => {
                                self.modules[module].aliases.insert(name, path);
                            }
                            None => self.modules[module].globs.push(path),
                        }
                    }
                }
                other => {
                    if let Some(name) = item_name(other) {
                        self.modules[module].items.insert(name);
                    }
                }
            }
        }
    }

    /// Where `path`, written in module `at`, leads (`None`: outside the crate, or a
    /// local name).
    fn resolve(&self, at: usize, path: &[String], depth: usize) -> Option<Target> {
        if depth > 32 || path.is_empty() {
            return None;
        }
        let first = path[0].as_str();
        let (start, rest) = match first {
            "crate" => (0, &path[1..]),
            "self" => (at, &path[1..]),
            "super" => {
                let mut m = at;
                let mut rest = path;
                while rest.first().map(String::as_str) == Some("super") {
                    m = self.modules[m].parent?;
                    rest = &rest[1..];
                }
                (m, rest)
            }
            _ => {
                let here = &self.modules[at];
                if here.children.contains_key(first) {
                    (at, path)
                } else if let Some(target) = here.aliases.get(first) {
                    let mut full = target.clone();
                    full.extend_from_slice(&path[1..]);
                    return self.resolve(at, &full, depth + 1);
                } else if here.items.contains(first) {
                    return Some(Target::File(here.file));
                } else {
                    return None;
                }
            }
        };
        self.walk(start, rest, depth)
    }

    /// Follows `rest` down from module `m`.
    fn walk(&self, m: usize, rest: &[String], depth: usize) -> Option<Target> {
        let Some(first) = rest.first() else { return Some(Target::Module(m)) };
        let module = &self.modules[m];
        if let Some(&child) = module.children.get(first) {
            return self.walk(child, &rest[1..], depth);
        }
        if module.items.contains(first) {
            return Some(Target::File(module.file));
        }
        if let Some(target) = module.aliases.get(first) {
            let mut full = target.clone();
            full.extend_from_slice(&rest[1..]);
            // An alias to something outside the crate is not a use of this file.
            return self.resolve(m, &full, depth + 1);
        }
        for glob in &module.globs {
            if let Some(Target::Module(g)) = self.resolve(m, glob, depth + 1)
                && g != m
                && let Some(found) = self.walk(g, rest, depth + 1)
            {
                return Some(found);
            }
        }
        Some(Target::File(module.file))
    }

    /// Whether module file `file` is the file of an ancestor of a module in file `of`.
    fn is_ancestor_file(&self, file: usize, of: usize) -> bool {
        self.modules.iter().filter(|m| m.file == of).any(|m| {
            let mut p = m.parent;
            while let Some(q) = p {
                if self.modules[q].file == file && self.modules[q].file != of {
                    return true;
                }
                p = self.modules[q].parent;
            }
            false
        })
    }

    /// The file graph: for each file, the files it uses and one path that makes each edge.
    fn edges(&self) -> Vec<BTreeMap<usize, String>> {
        let mut edges = vec![BTreeMap::new(); self.files.len()];
        // The module each file's top level belongs to.
        let mut top = vec![0; self.files.len()];
        for (i, m) in self.modules.iter().enumerate().rev() {
            top[m.file] = i;
        }
        for (file, syntax) in self.syntax.iter().enumerate() {
            let mut v = Collector { krate: self, module: top[file], paths: Vec::new() };
            for item in &syntax.items {
                v.visit_item(item);
            }
            for (module, path) in v.paths {
                if let Some(Target::File(to)) = self.resolve(module, &path, 0)
                    && to != file
                    // A parent assembling its children is not a use.
                    && !self.is_ancestor_file(file, to)
                {
                    edges[file].entry(to).or_insert_with(|| path.join("::"));
                }
            }
        }
        edges
    }
}

/// Gathers the paths a file names, with the module each is written in.
struct Collector<'a> {
    /// The crate, for module lookups.
    krate: &'a Crate,
    /// The module being visited.
    module: usize,
    /// (module, path) pairs found.
    paths: Vec<(usize, Vec<String>)>,
}

impl Collector<'_> {
    /// Records the `Ident (:: Ident)*` runs in a macro's tokens.
    fn scan_tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < trees.len() {
            match &trees[i] {
                TokenTree::Group(g) => {
                    self.scan_tokens(g.stream());
                    i += 1;
                }
                TokenTree::Ident(id) => {
                    let mut path = vec![id.to_string()];
                    let mut j = i + 1;
                    while j + 2 < trees.len() + 1 {
                        match (&trees.get(j), &trees.get(j + 1), &trees.get(j + 2)) {
                            (
                                Some(TokenTree::Punct(a)),
                                Some(TokenTree::Punct(b)),
                                Some(TokenTree::Ident(n)),
                            ) if a.as_char() == ':' && b.as_char() == ':' => {
                                path.push(n.to_string());
                                j += 3;
                            }
                            _ => break,
                        }
                    }
                    if path.len() > 1 {
                        self.paths.push((self.module, path));
                    }
                    i = j;
                }
                TokenTree::Punct(_) | TokenTree::Literal(_) => i += 1,
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if is_test_only(&m.attrs) {
            return;
        }
        if let Some((_, items)) = &m.content {
            let outer = self.module;
            self.module = self.krate.modules[outer].children[&m.ident.to_string()];
            for item in items {
                self.visit_item(item);
            }
            self.module = outer;
        }
    }

    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_test_only(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if is_test_only(&u.attrs) {
            return;
        }
        let mut out = Vec::new();
        flatten_use(&u.tree, &mut Vec::new(), &mut out);
        // A re-export names no item for this file's own use: what it names counts where
        // it is used (through the re-export, resolved to its definition).
        if !matches!(u.vis, syn::Visibility::Inherited) {
            return;
        }
        for (_, path) in out {
            self.paths.push((self.module, path));
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let path: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if path.len() > 1 {
            self.paths.push((self.module, path));
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.scan_tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}

/// The strongly connected sets of two or more files (Tarjan).
fn cycles(edges: &[BTreeMap<usize, String>]) -> Vec<Vec<usize>> {
    /// Tarjan's bookkeeping.
    struct State<'a> {
        edges: &'a [BTreeMap<usize, String>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn connect(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in s.edges[v].keys() {
            match s.index[w] {
                None => {
                    connect(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(i) if s.on_stack[w] => s.low[v] = s.low[v].min(i),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut set = Vec::new();
            loop {
                let w = s.stack.pop().expect("v is on the stack");
                s.on_stack[w] = false;
                set.push(w);
                if w == v {
                    break;
                }
            }
            if set.len() > 1 {
                set.sort_unstable();
                s.out.push(set);
            }
        }
    }
    let n = edges.len();
    let mut s = State {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            connect(&mut s, v);
        }
    }
    s.out
}

/// A shortest loop from `start` back to itself inside `set`.
fn a_loop(edges: &[BTreeMap<usize, String>], set: &[usize], start: usize) -> Vec<usize> {
    let mut prev: HashMap<usize, usize> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in edges[v].keys() {
            if !set.contains(&w) {
                continue;
            }
            if w == start {
                let mut path = vec![v];
                while let Some(&p) = prev.get(path.last().expect("non-empty")) {
                    path.push(p);
                }
                path.reverse();
                return path;
            }
            if w != start && !prev.contains_key(&w) {
                prev.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    vec![start]
}

/// One cycle as a loop of files with the path that makes each step, and all its files.
fn describe(krate: &Crate, edges: &[BTreeMap<usize, String>], set: &[usize]) -> String {
    let lp = a_loop(edges, set, set[0]);
    let mut line = String::new();
    for (k, &f) in lp.iter().enumerate() {
        let to = lp[(k + 1) % lp.len()];
        line += &format!("{} --[{}]--> ", krate.files[f].display(), edges[f][&to]);
    }
    line += &krate.files[lp[0]].display().to_string();
    let all: Vec<String> = set.iter().map(|&f| krate.files[f].display().to_string()).collect();
    format!("{line}\n      (all files in this cycle: {})", all.join(", "))
}

/// The cycles of the crate at `dir` (root file `root`), each described.
fn cycles_of(dir: &Path, root: &Path) -> Vec<String> {
    let krate = Crate::load(dir, root);
    let edges = krate.edges();
    cycles(&edges).iter().map(|set| describe(&krate, &edges, set)).collect()
}

/// The workspace members, from the root `Cargo.toml`.
fn members(root: &Path) -> Vec<PathBuf> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("the workspace manifest");
    let line = manifest.lines().find(|l| l.starts_with("members")).expect("a members line");
    line.split('"').skip(1).step_by(2).map(|m| root.join(m)).collect()
}

/// Cycles being removed on another branch (crate directory, every file of the cycle):
/// tolerated until then. An entry whose cycle is gone fails the test, so the list only
/// shrinks.
const BEING_REMOVED: &[(&str, &[&str])] = &[];

#[test]
fn no_file_level_import_cycle_in_any_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    let mut tolerated = Vec::new();
    for dir in members(root) {
        for crate_root in ["src/lib.rs", "src/main.rs"] {
            if !dir.join(crate_root).exists() {
                continue;
            }
            let krate = Crate::load(&dir, Path::new(crate_root));
            let edges = krate.edges();
            for set in cycles(&edges) {
                let files: BTreeSet<String> =
                    set.iter().map(|&f| krate.files[f].display().to_string()).collect();
                let known = BEING_REMOVED.iter().find(|(d, fs)| {
                    dir == root.join(d) && fs.iter().map(|f| f.to_string()).collect::<BTreeSet<_>>() == files
                });
                match known {
                    Some(k) => tolerated.push(k),
                    None => found.push(format!(
                        "{} ({crate_root}):\n    {}",
                        dir.display(),
                        describe(&krate, &edges, &set)
                    )),
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "file-level import cycles (see this file's doc for the rule):\n{}",
        found.join("\n")
    );
    for k in BEING_REMOVED {
        assert!(tolerated.contains(&k), "the cycle {k:?} is gone: remove it from BEING_REMOVED");
    }
}

/// A scratch crate written to a temporary directory.
fn scratch(files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rbee-cycles-{}-{}", std::process::id(), uuid_like()));
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("scratch dir");
        std::fs::write(path, text).expect("scratch file");
    }
    dir
}

/// A name unique within this process.
fn uuid_like() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn a_two_file_cycle_is_named() {
    let dir = scratch(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        ("src/a.rs", "pub struct A;\npub fn f(_: crate::b::B) {}\n"),
        ("src/b.rs", "use crate::a::A;\npub struct B(A);\n"),
    ]);
    let found = cycles_of(&dir, Path::new("src/lib.rs"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("src/a.rs --[crate::b::B]--> src/b.rs"), "{found:?}");
    assert!(found[0].contains("src/b.rs --[crate::a::A]--> src/a.rs"), "{found:?}");
}

#[test]
fn a_cycle_through_a_reexport_and_a_macro_is_named() {
    let dir = scratch(&[
        ("src/lib.rs", "mod outer;\nmod user;\n"),
        ("src/outer/mod.rs", "mod inner;\npub use inner::Thing;\n"),
        (
            "src/outer/inner.rs",
            "pub enum Thing { X }\npub fn g(t: &Thing) -> bool { matches!(t, crate::user::Y) }\n",
        ),
        ("src/user.rs", "use crate::outer;\npub const Y: u8 = 0;\npub fn f(_: outer::Thing) {}\n"),
    ]);
    let found = cycles_of(&dir, Path::new("src/lib.rs"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("src/outer/inner.rs"), "{found:?}");
    assert!(found[0].contains("src/user.rs"), "{found:?}");
    assert!(!found[0].contains("mod.rs"), "the re-exporting file is not part of it: {found:?}");
}

#[test]
fn a_parent_using_its_children_and_test_code_are_not_cycles() {
    let dir = scratch(&[
        ("src/lib.rs", "mod p;\n"),
        ("src/p.rs", "mod c;\npub struct P;\npub fn f(_: c::C) {}\n"),
        (
            "src/p/c.rs",
            "pub struct C(super::P);\n#[cfg(test)]\nmod tests { use crate::q::Q; }\n#[cfg(test)]\nfn t(_: crate::lib_item::X) {}\n",
        ),
    ]);
    assert_eq!(cycles_of(&dir, Path::new("src/lib.rs")), Vec::<String>::new());
}
