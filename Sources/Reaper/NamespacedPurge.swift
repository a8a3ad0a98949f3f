import Netlink

/// A purge or list in other network namespaces: each runs on its own OS thread that enters the
/// namespace first, so the purger's netlink sockets belong to it (see NetworkNamespace.run).
public enum NamespacedPurge {
    /// The namespace files `names` stand for: paths as given, `all` for every namespace on the node.
    public static func resolve(_ names: [String]) -> [String] {
        var paths: [String] = []
        for name in names {
            let expanded = name == "all" ? NetworkNamespace.all().map(\.path) : [name]
            for path in expanded where !paths.contains(path) { paths.append(path) }
        }
        return paths
    }

    /// Runs `act` with a fresh purger inside each namespace, one after the other, and merges the
    /// reports; a namespace that cannot be entered is a step error naming it.
    public static func run(
        in paths: [String], sockets: Bool, conntrack: Bool, _ act: @escaping @Sendable (Purger) -> PurgeReport
    ) -> PurgeReport {
        var merged = PurgeReport()
        for path in paths {
            do {
                let report = try NetworkNamespace.run(in: path) {
                    act(Purger(sockets: sockets, conntrack: conntrack))
                }
                merged.absorb(report, namespace: path)
            } catch {
                merged.stepErrors.append(error)
            }
        }
        return merged
    }
}
