//! Library code says what went wrong with a type, never with a bare `String`: no
//! `Result<_, String>` and no `type Err = String` / `type Error = String` (a `FromStr` or
//! `TryFrom` whose error is text) in the `src/` of the library crates (`rbee-proto`,
//! `shared`, `hive`, `queen`; not the fake NVML libraries, which are test fixtures),
//! outside `#[cfg(test)]` code, `*_tests.rs` files and `test_support`. Each error is a `thiserror` type of its
//! crate or a small local one, so callers can match on it and the text has one home.
//!
//! And the queen's error becomes a gRPC status in one place, at its API edge
//! (`queen/src/api/status.rs`).

use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Whether the attributes hold `#[cfg(test)]`.
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.meta.require_list().is_ok_and(|l| l.tokens.to_string() == "test")
    })
}

/// Whether `ty` is `String` (or `std::string::String`).
fn is_string(ty: &syn::Type) -> bool {
    matches!(ty, syn::Type::Path(p) if p.qself.is_none()
        && p.path.segments.last().is_some_and(|s| s.ident == "String" && s.arguments.is_none()))
}

/// Finds the text-typed errors of one file.
struct Finder {
    /// `item: what` for each one found.
    found: Vec<String>,
    /// The names of the items being visited, outermost first.
    within: Vec<String>,
}

impl Finder {
    /// Records one, named by the items around it.
    fn found(&mut self, what: &str) {
        self.found.push(format!("{}: {what}", self.within.join("::")));
    }
}

impl<'ast> Visit<'ast> for Finder {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let test_only = match item {
            syn::Item::Fn(i) => is_test_only(&i.attrs),
            syn::Item::Impl(i) => is_test_only(&i.attrs),
            syn::Item::Mod(i) => is_test_only(&i.attrs),
            syn::Item::Type(i) => is_test_only(&i.attrs),
            syn::Item::Struct(i) => is_test_only(&i.attrs),
            syn::Item::Enum(i) => is_test_only(&i.attrs),
            syn::Item::Trait(i) => is_test_only(&i.attrs),
            syn::Item::Const(i) => is_test_only(&i.attrs),
            syn::Item::Static(i) => is_test_only(&i.attrs),
            _ => false,
        };
        if test_only {
            return;
        }
        let name = match item {
            syn::Item::Fn(i) => Some(i.sig.ident.to_string()),
            syn::Item::Type(i) => Some(i.ident.to_string()),
            syn::Item::Struct(i) => Some(i.ident.to_string()),
            syn::Item::Enum(i) => Some(i.ident.to_string()),
            syn::Item::Trait(i) => Some(i.ident.to_string()),
            syn::Item::Mod(i) => Some(i.ident.to_string()),
            syn::Item::Impl(i) => match &*i.self_ty {
                syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
                _ => None,
            },
            _ => None,
        };
        let named = name.is_some();
        self.within.extend(name);
        syn::visit::visit_item(self, item);
        if named {
            self.within.pop();
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if is_test_only(&f.attrs) {
            return;
        }
        self.within.push(f.sig.ident.to_string());
        syn::visit::visit_impl_item_fn(self, f);
        self.within.pop();
    }

    fn visit_impl_item_type(&mut self, t: &'ast syn::ImplItemType) {
        if (t.ident == "Err" || t.ident == "Error") && is_string(&t.ty) {
            self.found(&format!("type {} = String", t.ident));
        }
        syn::visit::visit_impl_item_type(self, t);
    }

    fn visit_path_segment(&mut self, s: &'ast syn::PathSegment) {
        if s.ident == "Result"
            && let syn::PathArguments::AngleBracketed(args) = &s.arguments
            && args.args.len() == 2
            && let Some(syn::GenericArgument::Type(err)) = args.args.last()
            && is_string(err)
        {
            self.found("Result<_, String>");
        }
        syn::visit::visit_path_segment(self, s);
    }
}

/// The `.rs` files under `dir`, skipping test-only files and folders.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "test_support"
            || name == "test_support.rs"
            || name.ends_with("_tests.rs")
            || name == "tests.rs"
        {
            continue;
        }
        if path.is_dir() {
            sources(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// The text-typed errors in the files under `dir`, as `file:line: what`.
fn text_errors(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    sources(dir, &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a source file");
        let syntax = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut finder = Finder { found: Vec::new(), within: Vec::new() };
        finder.visit_file(&syntax);
        found.extend(finder.found.into_iter().map(|f| format!("{}:{f}", file.display())));
    }
    found
}

#[test]
fn no_text_typed_error_in_library_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for member in [".", "shared", "hive", "queen"] {
        found.extend(text_errors(&root.join(member).join("src")));
    }
    assert!(found.is_empty(), "errors typed as String (give each a thiserror type):\n{}", found.join("\n"));
}

#[test]
fn a_text_typed_error_is_found_and_test_code_is_not() {
    let dir = std::env::temp_dir().join(format!("rbee-typed-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::write(
        dir.join("lib.rs"),
        "pub fn a() -> Result<u8, String> { Ok(0) }\n\
         pub fn b() -> std::io::Result<String> { Ok(String::new()) }\n\
         pub struct P;\n\
         impl std::str::FromStr for P { type Err = String; fn from_str(_: &str) -> Result<Self, Self::Err> { Ok(P) } }\n\
         #[cfg(test)]\n\
         fn t() -> Result<(), String> { Ok(()) }\n",
    )
    .expect("scratch file");
    let found = text_errors(&dir);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].ends_with("lib.rs:a: Result<_, String>"), "{found:?}");
    assert!(found[1].ends_with("lib.rs:P: type Err = String"), "{found:?}");
}

/// The files of `dir` holding an `impl From<ERROR> for …Status`.
fn status_mappings(dir: &Path, error: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    sources(dir, &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|file| {
            let text = std::fs::read_to_string(file).expect("a source file");
            let syntax = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            syntax.items.iter().any(|item| {
                let syn::Item::Impl(i) = item else { return false };
                let Some((_, trait_path, _)) = &i.trait_ else { return false };
                let names_status = matches!(&*i.self_ty, syn::Type::Path(p)
                    if p.path.segments.last().is_some_and(|s| s.ident == "Status"));
                let from_error = trait_path.segments.last().is_some_and(|s| {
                    s.ident == "From"
                        && matches!(&s.arguments, syn::PathArguments::AngleBracketed(a)
                            if matches!(a.args.first(), Some(syn::GenericArgument::Type(syn::Type::Path(t)))
                                if t.path.segments.last().is_some_and(|s| s.ident == error)))
                });
                names_status && from_error
            })
        })
        .collect()
}

/// The queen's error becomes a gRPC status in one place, at its API edge: the layers
/// below keep their typed errors and never see a status.
#[test]
fn the_queen_maps_its_error_to_a_status_once_in_its_api() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("queen/src");
    let found = status_mappings(&src, "QueenError");
    assert_eq!(
        found,
        [src.join("api/status.rs")],
        "From<QueenError> for Status belongs in queen/src/api/status.rs"
    );
}
