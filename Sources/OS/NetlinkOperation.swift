/// The netlink requests this program sends, each spelt once: by the name the kernel headers give
/// its message type, which is what errors, metrics labels and log lines show. Code that must know a
/// request (the hint for a kernel without SOCK_DESTROY, the layer a trouble is counted under) compares
/// these cases, never the spelling.
public enum NetlinkOperation: String, Sendable, Hashable, CaseIterable {
    /// A socket dump of one family, or a get of one socket by its 4-tuple.
    case socketDiagnosis = "SOCK_DIAG_BY_FAMILY"
    /// The TCP walk of both families at once (inet_diag's older request).
    case tcpDiagnosis = "TCPDIAG_GETSOCK"
    case socketDestroy = "SOCK_DESTROY"
    case conntrackGet = "IPCTNL_MSG_CT_GET"
    case conntrackStatistics = "IPCTNL_MSG_CT_GET_STATS"
    case conntrackCreate = "IPCTNL_MSG_CT_NEW"
    /// An exact delete, and the filtered flush (the same message carrying CTA_FILTER).
    case conntrackDelete = "IPCTNL_MSG_CT_DELETE"
    case routeGet = "RTM_GETROUTE"

    /// The kernel interface the request goes to.
    public var layer: SystemCallError.Layer {
        switch self {
        case .socketDiagnosis, .tcpDiagnosis, .socketDestroy: .sockDiag
        case .conntrackGet, .conntrackStatistics, .conntrackCreate, .conntrackDelete: .conntrack
        case .routeGet: .route
        }
    }
}
