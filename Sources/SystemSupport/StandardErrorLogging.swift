import Logging

extension Logger {
    /// Sends the process's logs to standard error (swift-log's bootstrap, so
    /// once per process) and returns a logger labelled `label` at `level`.
    public static func bootstrappingStandardError(label: String, level: Logger.Level) -> Logger {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }
}
