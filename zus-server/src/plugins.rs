//! Plugin loading (P-PL1): every `*.so` in the plugin directory is opened, its registration
//! symbol called, and its vtable checked (magic, ABI version, struct size, required entries). A bad
//! plugin is logged with the reason and skipped; it never stops the server.
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use zus_plugin::{HostApi, PLUGIN_MAGIC, PluginVtable, REGISTER_SYMBOL, plugin_flags};

/// Why a plugin was refused.
#[derive(Debug, thiserror::Error)]
pub enum PluginLoadError {
    /// dlopen failed.
    #[error("cannot load {path}: {reason}")]
    Open {
        /// File.
        path: String,
        /// Loader message.
        reason: String,
    },
    /// The registration symbol is missing.
    #[error("{path} does not export zus_plugin_register: not a zufs plugin")]
    NoSymbol {
        /// File.
        path: String,
    },
    /// The vtable is unusable.
    #[error("{path}: {reason}")]
    Refused {
        /// File.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The directory could not be read.
    #[error("reading plugin directory {path}: {source}")]
    Dir {
        /// Directory.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// A loaded, checked plugin.
#[derive(Debug)]
pub struct Plugin {
    /// fs type name.
    pub name: String,
    /// Shared object path.
    pub path: PathBuf,
    /// The plugin's vtable (static inside the never-unloaded library).
    pub vtable: &'static PluginVtable,
}

impl Plugin {
    /// Whether the filesystem needs a device.
    #[must_use]
    pub fn needs_device(&self) -> bool {
        self.vtable.flags & plugin_flags::NEEDS_DEVICE != 0
    }
}

/// Checks a vtable a plugin returned.
///
/// # Errors
/// The reason it cannot be used.
pub fn check_vtable(vt: &PluginVtable) -> Result<String, String> {
    if vt.magic != PLUGIN_MAGIC {
        return Err(format!("bad vtable magic {:#018x}: not a zufs plugin", vt.magic));
    }
    if vt.abi_version != zus_api::ZUS_ABI_VERSION {
        return Err(format!(
            "built for zus_api ABI version {}, this zusd speaks version {}; rebuild the plugin",
            vt.abi_version,
            zus_api::ZUS_ABI_VERSION
        ));
    }
    if (vt.struct_size as usize) < size_of::<PluginVtable>() {
        return Err(format!("vtable is {} bytes, expected at least {}", vt.struct_size, size_of::<PluginVtable>()));
    }
    if vt.mount.is_none() || vt.unmount.is_none() || vt.op.is_none() {
        return Err("vtable lacks mount, unmount or op".to_owned());
    }
    let end = vt.name.iter().position(|&b| b == 0).unwrap_or(vt.name.len());
    let name = core::str::from_utf8(&vt.name[..end]).map_err(|_| "fs type name is not UTF-8".to_owned())?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(format!("fs type name {name:?} must be non-empty [A-Za-z0-9_-]"));
    }
    Ok(name.to_owned())
}

/// Loads one plugin.
///
/// # Errors
/// [`PluginLoadError`] with the reason.
pub fn load(path: &Path) -> Result<Plugin, PluginLoadError> {
    let p = path.display().to_string();
    // SAFETY: loading a shared object runs its initialisers; plugins are trusted code installed by
    // the administrator in the plugin directory (as kernel modules are).
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| PluginLoadError::Open { path: p.clone(), reason: e.to_string() })?;
    // SAFETY: the symbol's type is fixed by the zus_api contract.
    let register: libloading::Symbol<'_, unsafe extern "C" fn(*const HostApi) -> *const PluginVtable> =
        unsafe { lib.get(REGISTER_SYMBOL) }.map_err(|_| PluginLoadError::NoSymbol { path: p.clone() })?;
    // SAFETY: the host API is static, so valid for the process lifetime as the contract requires.
    let vt_ptr = unsafe { register(crate::host::api()) };
    if vt_ptr.is_null() {
        return Err(PluginLoadError::Refused { path: p, reason: "registration returned NULL".into() });
    }
    // First read only the fixed prefix (magic, version, size) before trusting the full struct.
    // SAFETY: a non-null vtable pointer from the plugin; the library is leaked below, so the
    // static it points to lives for the rest of the process.
    let head = unsafe { vt_ptr.cast::<[u32; 4]>().read() };
    let magic = u64::from(head[0]) | (u64::from(head[1]) << 32);
    if magic != PLUGIN_MAGIC {
        return Err(PluginLoadError::Refused { path: p, reason: format!("bad vtable magic {magic:#018x}") });
    }
    if (head[3] as usize) < size_of::<PluginVtable>() || head[2] != zus_api::ZUS_ABI_VERSION {
        return Err(PluginLoadError::Refused {
            path: p,
            reason: format!(
                "built for zus_api ABI version {} (vtable {} bytes), this zusd speaks version {} ({} bytes); rebuild the plugin",
                head[2],
                head[3],
                zus_api::ZUS_ABI_VERSION,
                size_of::<PluginVtable>()
            ),
        });
    }
    // SAFETY: version and size checked: the full vtable is present and has our layout.
    let vt: &'static PluginVtable = unsafe { &*vt_ptr };
    let name = check_vtable(vt).map_err(|reason| PluginLoadError::Refused { path: p.clone(), reason })?;
    // Never unload a plugin: Rust cdylibs have TLS destructors and statics that make dlclose unsound.
    std::mem::forget(lib);
    Ok(Plugin { name, path: path.to_owned(), vtable: vt })
}

/// Loads every `*.so` in `dir`, logging and skipping bad ones and duplicates.
///
/// # Errors
/// Only when the directory itself cannot be read.
pub fn load_dir(dir: &Path) -> Result<Vec<Plugin>, PluginLoadError> {
    let rd =
        std::fs::read_dir(dir).map_err(|source| PluginLoadError::Dir { path: dir.display().to_string(), source })?;
    let mut paths: Vec<PathBuf> =
        rd.flatten().map(|e| e.path()).filter(|p| p.extension() == Some(OsStr::new("so"))).collect();
    paths.sort();
    let mut out: Vec<Plugin> = Vec::new();
    for path in paths {
        match load(&path) {
            Ok(pl) => {
                if out.iter().any(|o| o.name == pl.name) {
                    tracing::warn!("skipping plugin {}: fs type {:?} already loaded", path.display(), pl.name);
                    continue;
                }
                tracing::info!("loaded plugin {:?} from {}", pl.name, path.display());
                out.push(pl);
            }
            Err(e) => tracing::warn!("skipping plugin: {e}"),
        }
    }
    Ok(out)
}
