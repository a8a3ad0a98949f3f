import Conntrack
import NetworkAddress
import SockDiag
import OS

/// What this host lets conn-reaper do, found by trying each thing for real.
public struct HostCheck: Sendable {
    public enum Verdict: Sendable, Equatable {
        case ok, warning, failed
    }

    public struct Finding: Sendable {
        public var name: String
        public var verdict: Verdict
        public var detail: String
    }

    public private(set) var findings: [Finding] = []

    /// False when the agent could not end sockets here.
    public var agentCanWork: Bool { !findings.contains { $0.verdict == .failed } }

    public init() {
        findings.append(contentsOf: Self.checkSockets())
        findings.append(Self.checkConntrack())
        findings += Self.checkConntrackFlush()
        findings.append(contentsOf: Self.checkCapabilities())
    }

    static func checkSockets() -> [Finding] {
        let diagnostics: SocketDiagnostics
        do { diagnostics = try SocketDiagnostics() } catch {
            return [Finding(name: "sock_diag", verdict: .failed, detail: error.description)]
        }
        var findings: [Finding] = []
        do {
            switch try diagnostics.probeDestroySupport() {
            case .failed(let errno) where errno == .noSuchFileOrDirectory:
                findings.append(
                    Finding(
                        name: "SOCK_DESTROY supported", verdict: .ok,
                        detail: "kernel has CONFIG_INET_DIAG_DESTROY (a tuple that cannot exist gave ENOENT)"))
            case .done:
                findings.append(
                    Finding(name: "SOCK_DESTROY supported", verdict: .warning, detail: "a tuple that cannot exist was destroyed"))
            case .failed(let errno) where errno == .notSupported:
                return [
                    Finding(
                        name: "SOCK_DESTROY supported", verdict: .failed,
                        detail: "kernel built without CONFIG_INET_DIAG_DESTROY: sockets cannot be ended")
                ]
            case .failed(let errno):
                findings.append(Finding(name: "SOCK_DESTROY supported", verdict: .warning, detail: "probe answered \(errno)"))
            case .unconfirmed:
                findings.append(Finding(name: "SOCK_DESTROY supported", verdict: .warning, detail: "probe ack lost"))
            }
        } catch {
            return [Finding(name: "SOCK_DESTROY supported", verdict: .failed, detail: error.description)]
        }
        findings.append(checkDestroyAllowed(diagnostics))
        return findings
    }

    /// EPERM shows only when destroying a socket that exists: destroy a loopback connection of our own.
    static func checkDestroyAllowed(_ diagnostics: SocketDiagnostics) -> Finding {
        let name = "SOCK_DESTROY allowed"
        let connection: LoopbackConnection
        do { connection = try LoopbackConnection() } catch {
            return Finding(
                name: name, verdict: .warning,
                detail: "no loopback connection to test with (\(error)); is lo up in this namespace?")
        }
        let destination = Destination(address: connection.serverEndpoint.address, port: connection.serverEndpoint.port)
        do {
            let ours = try diagnostics.sockets(matching: SocketQuery(destinations: [destination])).sockets
                .filter { $0.local == connection.clientEndpoint }
            guard !ours.isEmpty else {
                return Finding(name: name, verdict: .warning, detail: "own loopback socket not found in the dump")
            }
            switch try diagnostics.destroy(ours)[0] {
            case .done, .failed(.noSuchFileOrDirectory):
                let seen = connection.clientError()
                return seen?.errno == .connectionAbort
                    ? Finding(name: name, verdict: .ok, detail: "own loopback connection destroyed; its owner saw ECONNABORTED")
                    : Finding(
                        name: name, verdict: .warning,
                        detail: "destroy acknowledged but the owner saw \(seen.map(\.description) ?? "no error")")
            case .failed(let errno) where errno == .notPermitted:
                return Finding(name: name, verdict: .failed, detail: "EPERM: needs CAP_NET_ADMIN in this network namespace")
            case .failed(let errno):
                return Finding(name: name, verdict: .failed, detail: "destroy answered \(errno)")
            case .unconfirmed:
                return Finding(name: name, verdict: .warning, detail: "destroy ack lost")
            }
        } catch {
            return Finding(name: name, verdict: .failed, detail: error.description)
        }
    }

    static func checkConntrack() -> Finding {
        let name = "ctnetlink"
        do {
            let table = try ConntrackTable()
            let nowhere = Destination(address: .v4(0x7F00_0001), port: 1)
            _ = try table.entries(for: [nowhere], transports: [.tcp])
            return Finding(name: name, verdict: .ok, detail: "conntrack table readable; entries can be deleted")
        } catch  where error.meansConntrackAbsent {
            return Finding(name: name, verdict: .warning, detail: "conntrack not available here: only sockets will be ended")
        } catch  where error.errno == .notPermitted {
            return Finding(name: name, verdict: .failed, detail: "EPERM: needs CAP_NET_ADMIN in this network namespace")
        } catch {
            return Finding(name: name, verdict: .warning, detail: error.description)
        }
    }

    /// Tried here on a canary entry whatever an earlier process of this boot found (the agent runs
    /// this check at start), and left for the rest of the boot: a purge then knows whether to flush
    /// or to delete entry by entry without trying it again. The IPv6 trial only informs: IPv6
    /// entries are deleted one by one whatever it finds. Empty where conntrack cannot be used at all.
    static func checkConntrackFlush() -> [Finding] {
        guard let table = try? ConntrackTable() else { return [] }
        table.verifyFlush(.now)
        guard let verdict = ConntrackTable.flushVerdict.withLock({ $0 }) else { return [] }
        let name = "conntrack filtered flush"
        let oneByOne = "entries are deleted one by one"
        var findings: [Finding]
        switch verdict {
        case .trusted:
            findings = [
                Finding(
                    name: name, verdict: .ok,
                    detail: "supported (Linux 6.12+) and proven on a canary entry (zone \(FlushCanary.zone)): "
                        + "many entries toward one IPv4 destination go in one request")
            ]
        case .refused:
            return [Finding(name: name, verdict: .ok, detail: "not supported by this kernel (before 6.12): \(oneByOne)")]
        case .comparesWrongly(let what):
            return [Finding(name: name, verdict: .warning, detail: "not trusted, \(what) on a canary entry: \(oneByOne)")]
        case .untried(let why):
            return [Finding(name: name, verdict: .warning, detail: "not tried on a canary entry (\(why)): \(oneByOne)")]
        }
        let ipv6: String =
            switch table.tryFlush(on: .v6) {
            case .trusted: "compared right on a canary entry; IPv6 entries are still deleted one by one"
            case .comparesWrongly(let what): "this kernel compares IPv6 addresses wrongly (\(what)): IPv6 \(oneByOne)"
            case .refused, .untried: "not tried on a canary entry: IPv6 \(oneByOne)"
            }
        findings.append(Finding(name: "conntrack flush, IPv6", verdict: .ok, detail: ipv6))
        return findings
    }

    static func checkCapabilities() -> [Finding] {
        guard let capabilities = HostCapabilities.current() else {
            return [Finding(name: "capabilities", verdict: .warning, detail: "cannot read /proc/self/status")]
        }
        return [
            capabilities.holds(HostCapabilities.netAdmin)
                ? Finding(name: "CAP_NET_ADMIN", verdict: .ok, detail: "held: needed to destroy sockets and touch conntrack")
                : Finding(
                    name: "CAP_NET_ADMIN", verdict: .warning,
                    detail: "not held in the effective set: destroys work only where a user namespace grants it"),
            capabilities.holds(HostCapabilities.sysAdmin)
                ? Finding(name: "CAP_SYS_ADMIN", verdict: .ok, detail: "held: can enter other network namespaces")
                : Finding(name: "CAP_SYS_ADMIN", verdict: .ok, detail: "not held: needed only to enter other network namespaces"),
            capabilities.holds(HostCapabilities.sysPtrace)
                ? Finding(
                    name: "CAP_SYS_PTRACE", verdict: .ok, detail: "held: netns all sees namespaces held only by more privileged processes")
                : Finding(
                    name: "CAP_SYS_PTRACE", verdict: .ok,
                    detail: "not held: netns all finds /run/netns and namespaces of processes with no capability beyond ours"),
        ]
    }
}
