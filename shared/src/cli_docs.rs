//! `completions` and `man`, the same for both binaries. Everything is rendered into
//! memory first and written through [`crate::stdout`], so a closed pipe is an error to
//! end on quietly, never a panic inside clap's writers.

use std::io;
use std::path::Path;

/// Prints the completion script of `cmd` (installed as `name`) for `shell`.
pub fn completions(mut cmd: clap::Command, name: &str, shell: clap_complete::Shell) -> io::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    crate::stdout::write_bytes(&script)
}

/// Prints the man page of `cmd`; with `dir`, writes one page per subcommand there
/// instead (every page the main page's SEE ALSO names) and says where.
pub fn man(cmd: clap::Command, dir: Option<&Path>) -> io::Result<()> {
    match dir {
        Some(dir) => {
            clap_mangen::generate_to(cmd, dir).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot write the man pages into {}: {e}", dir.display()))
            })?;
            crate::outln!("wrote the man pages into {}", dir.display())
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            crate::stdout::write_bytes(&page)
        }
    }
}
