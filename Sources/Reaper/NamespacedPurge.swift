import OS

/// A purge or list in other network namespaces: each runs on its own OS thread that enters the
/// namespace first, so the purger's netlink sockets belong to it (see NamespaceThread).
public enum NamespacedPurge {
    public struct Target: Sendable, Equatable {
        public var path: String
        /// Found by `all`: a process that exited since the listing took its namespace along, no error.
        public var mayVanish: Bool
    }

    /// The namespace files `names` stand for: paths as given, `all` for every namespace on the node.
    public static func resolve(_ names: [String]) -> [Target] {
        var targets: [Target] = []
        for name in names {
            let expanded =
                name == "all"
                ? NetworkNamespace.all().map { Target(path: $0.path, mayVanish: true) }
                : [Target(path: NetworkNamespace.path(naming: name) ?? name, mayVanish: false)]
            for target in expanded where !targets.contains(where: { $0.path == target.path }) { targets.append(target) }
        }
        return targets
    }

    /// Runs `act` with a fresh purger inside each namespace, one after the other, and merges the
    /// reports; a namespace that cannot be entered is a step error naming it.
    public static func run(
        in targets: [Target], sockets: Bool, conntrack: Bool, _ act: @escaping @Sendable (Purger) -> PurgeReport
    ) -> PurgeReport {
        var merged = PurgeReport()
        for target in targets {
            do {
                let thread = try NamespaceThread(entering: target.path)
                defer { thread.stop() }
                let report = try thread.runAndWait { act(Purger(sockets: sockets, conntrack: conntrack)) }
                merged.absorb(report, namespace: target.path)
            } catch  where target.mayVanish && (error.errno == .noSuchFileOrDirectory || error.errno == .noSuchProcess) {
                continue
            } catch {
                merged.stepErrors.append(error)
            }
        }
        return merged
    }
}
