//! The Stash controller. Nothing is implemented yet: the Kubernetes API and the
//! controller arrive with their own issue. The binary says so and fails rather
//! than pretend to reconcile anything.
fn main() {
    eprintln!("stash-controller: not implemented yet (see the Kubernetes controller issue)");
    std::process::exit(2);
}
