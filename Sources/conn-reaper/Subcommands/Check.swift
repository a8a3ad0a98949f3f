import ArgumentParser
import Reaper

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Say what this host allows: SOCK_DESTROY, ctnetlink, capabilities.",
        discussion: "Exit 1 when conn-reaper could not do its job in this network namespace.")

    func run() throws {
        let check = HostCheck()
        let rows = check.findings.map { finding in
            [finding.name, Self.label(finding.verdict), finding.detail]
        }
        print(ReportPrinter.table([["Check", "Result", "Detail"]] + rows))
        print(check.agentCanWork ? "\nverdict: conn-reaper can do its job here" : "\nverdict: conn-reaper cannot do its job here")
        if !check.agentCanWork { throw ExitCode.failure }
    }

    static func label(_ verdict: HostCheck.Verdict) -> String {
        switch verdict {
        case .ok: "ok"
        case .warning: "warn"
        case .failed: "FAIL"
        }
    }
}
