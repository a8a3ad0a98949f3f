public enum ConnReaperVersion {
    public static let current = "0.1.0"
}
