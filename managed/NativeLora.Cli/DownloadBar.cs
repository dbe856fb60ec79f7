using NativeLora.Hub;

namespace NativeLora.Cli;

/// <summary>Hub downloads on stderr: a bar redrawn in place on a terminal; a line per file otherwise (logs, pipes).</summary>
internal sealed class DownloadBar(TextWriter err) : IProgress<HubDownloadProgress>
{
    private readonly bool _terminal = !Console.IsErrorRedirected;
    private string? _file;
    private DateTime _drawn;

    public void Report(HubDownloadProgress p)
    {
        bool first = _file != p.File;
        bool last = p.Total >= 0 && p.Done >= p.Total;
        _file = p.File;
        if (!_terminal)
        {
            if (first) err.WriteLine($"downloading {p.Repo}/{p.File} ({Mib(p.Total)})");
            return;
        }
        if (!first && !last && DateTime.UtcNow - _drawn < TimeSpan.FromMilliseconds(100)) return;
        _drawn = DateTime.UtcNow;
        double f = p.Total > 0 ? Math.Clamp((double)p.Done / p.Total, 0, 1) : 0;
        int width = 30, filled = (int)(f * width);
        err.Write($"\r{p.File,-32} [{new string('#', filled)}{new string('.', width - filled)}] {f * 100,5:F1}% {Mib(p.Done)} / {Mib(p.Total)}  ");
        if (last) err.WriteLine();
    }

    private static string Mib(long bytes) => bytes < 0 ? "?" : $"{bytes / 1048576.0:F1} MiB";
}
