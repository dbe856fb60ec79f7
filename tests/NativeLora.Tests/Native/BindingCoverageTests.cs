using System.Reflection;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using NativeLora.Native;

namespace NativeLora.Tests.Native;

/// <summary>
/// native/include/nativelora.h is the single source of truth: every NL_API function must have
/// a [LibraryImport] binding with the same parameter count, no binding may name a function the
/// header lacks, and the built library must export every header function.
/// </summary>
public class BindingCoverageTests
{
    internal static string RepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir != null && !File.Exists(Path.Combine(dir.FullName, "native", "include", "nativelora.h")))
            dir = dir.Parent;
        return dir?.FullName ?? throw new DirectoryNotFoundException("repository root (native/include/nativelora.h) not found above " + AppContext.BaseDirectory);
    }

    private static Dictionary<string, int> HeaderFunctions()
    {
        var text = File.ReadAllText(Path.Combine(RepoRoot(), "native", "include", "nativelora.h"));
        text = Regex.Replace(text, @"/\*.*?\*/", " ", RegexOptions.Singleline); // comments
        var result = new Dictionary<string, int>();
        foreach (Match m in Regex.Matches(text, @"NL_API\s+[^;(]*?\b(nl_\w+)\s*\(([^)]*)\)\s*;"))
        {
            var args = m.Groups[2].Value.Trim();
            int count = args is "" or "void" ? 0 : args.Split(',').Length;
            result.Add(m.Groups[1].Value, count);
        }
        return result;
    }

    private static Dictionary<string, int> Bindings() =>
        typeof(NativeCore).Assembly.GetType("NativeLora.Native.NativeMethods", throwOnError: true)!
            .GetMethods(BindingFlags.Static | BindingFlags.NonPublic | BindingFlags.Public | BindingFlags.DeclaredOnly)
            .Where(m => m.GetCustomAttribute<LibraryImportAttribute>() != null)
            .ToDictionary(m => m.Name, m => m.GetParameters().Length);

    [Test]
    public void HeaderParsesToTheExpectedSurface()
    {
        var header = HeaderFunctions();
        Assert.That(header, Has.Count.GreaterThanOrEqualTo(20), "header parser found too few functions");
        Assert.That(header["nl_gemm_strided_batched"], Is.EqualTo(19));
        Assert.That(header["nl_backend_name"], Is.EqualTo(0));
    }

    [Test]
    public void EveryHeaderFunctionIsBoundAndNothingElse()
    {
        var header = HeaderFunctions();
        var bound = Bindings();
        var missing = header.Keys.Except(bound.Keys).OrderBy(x => x).ToList();
        var extra = bound.Keys.Except(header.Keys).OrderBy(x => x).ToList();
        Assert.That(missing, Is.Empty, "header functions without a [LibraryImport] binding");
        Assert.That(extra, Is.Empty, "bindings for functions the header does not declare");
        foreach (var (name, count) in header)
            Assert.That(bound[name], Is.EqualTo(count), $"{name}: header has {count} parameters, binding has {bound[name]}");
    }

    [Test]
    public void TheBuiltLibraryExportsEveryHeaderFunction()
    {
        _ = Support.TestDevice.Shared; // loads the library through the resolver
        var path = Path.Combine(AppContext.BaseDirectory, "libnativelora.so");
        if (!OperatingSystem.IsLinux()) path = Path.Combine(AppContext.BaseDirectory, "nativelora.dll");
        var handle = NativeLibrary.Load(path);
        foreach (var name in HeaderFunctions().Keys)
            Assert.That(NativeLibrary.TryGetExport(handle, name, out _), Is.True, $"{name} is not exported by {path}");
    }
}
