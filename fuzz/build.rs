// nullfs and pmemfs each export the plugin registration symbol `zus_plugin_register` (in zusd
// they are separate shared objects). The fuzz harness links both as rlibs and never calls it:
// it takes each plugin's vtable with `zus_plugin::vtable::<T>()`. Let the linker keep one.
fn main() {
    println!("cargo:rustc-link-arg=-Wl,--allow-multiple-definition");
}
