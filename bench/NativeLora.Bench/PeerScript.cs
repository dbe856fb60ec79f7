using System.Diagnostics;

namespace NativeLora.Bench;

/// <summary>Runs one of the Python peers under bench/peer/ and collects what it printed (one JSON object per line).</summary>
internal static class PeerScript
{
    /// <summary>The script's stdout lines; throws with its stderr (and <paramref name="hint"/>) when it exits non-zero.</summary>
    public static string[] Run(string python, string script, IEnumerable<string> arguments, string hint)
    {
        var psi = new ProcessStartInfo(python) { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(BenchArgs.Root(), "bench", "peer", script));
        foreach (var a in arguments) psi.ArgumentList.Add(a);
        psi.Environment["OMP_WAIT_POLICY"] = "PASSIVE";
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {python}");
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"the peer {python} {script} failed ({hint}): {stderr.Result.Trim().Split('\n').Last()}");
        return stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }
}
