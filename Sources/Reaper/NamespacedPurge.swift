import OS

/// A purge or list in other network namespaces: each runs on its own OS thread that enters the
/// namespace first, so the purger's netlink sockets belong to it (see NamespaceThread).
public enum NamespacedPurge {
    public struct Target: Sendable, Equatable {
        public var path: String
        /// Found by `all`: a process that exited since the listing took its namespace along, no error.
        public var mayVanish: Bool
    }

    /// What one `--netns` word names: every namespace on the node, or one namespace file.
    public enum Selection: Sendable, Equatable {
        case all
        case path(String)

        /// `all`, a name under /run/netns (as `ip -n` takes) or a path; nil for a word that is neither.
        public init?(naming word: String) {
            if word == "all" {
                self = .all
            } else if let path = NetworkNamespace.path(naming: word) {
                self = .path(path)
            } else {
                return nil
            }
        }
    }

    /// The namespace files the selections stand for, each once: paths as given, `all` for every
    /// namespace on the node.
    public static func resolve(_ selections: [Selection]) -> [Target] {
        var targets: [Target] = []
        for selection in selections {
            let expanded =
                switch selection {
                case .all: NetworkNamespace.all().map { Target(path: $0.path, mayVanish: true) }
                case .path(let path): [Target(path: path, mayVanish: false)]
                }
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
