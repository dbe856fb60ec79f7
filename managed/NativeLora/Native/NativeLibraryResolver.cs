using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace NativeLora.Native;

/// <summary>
/// Finds libnativelora next to the assemblies (the build copies it there), or where
/// NATIVELORA_NATIVE_DIR points. The resolver is asked once per imported function,
/// so the handle is cached.
/// </summary>
internal static class NativeLibraryResolver
{
    private static nint s_handle;
    private static readonly object s_lock = new();

#pragma warning disable CA2255 // a library must register its resolver before the first P/Invoke
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void Register() =>
        NativeLibrary.SetDllImportResolver(typeof(NativeLibraryResolver).Assembly, Resolve);

    private static nint Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (name != NativeMethods.Library) return 0;
        lock (s_lock)
        {
            if (s_handle != 0) return s_handle;
            var tried = new List<string>();
            foreach (var dir in CandidateDirectories())
            {
                var path = Path.Combine(dir, FileName);
                tried.Add(path);
                if (File.Exists(path) && NativeLibrary.TryLoad(path, out s_handle)) return s_handle;
            }
            throw new DllNotFoundException(
                $"NativeLora's native core ({FileName}) was not found. Looked in: {string.Join(", ", tried)}. " +
                "Build it with ./build.sh, or set NATIVELORA_NATIVE_DIR to the folder that holds it.");
        }
    }

    internal static string FileName =>
        OperatingSystem.IsWindows() ? "nativelora.dll" : OperatingSystem.IsMacOS() ? "libnativelora.dylib" : "libnativelora.so";

    private static IEnumerable<string> CandidateDirectories()
    {
        var env = Environment.GetEnvironmentVariable("NATIVELORA_NATIVE_DIR");
        if (!string.IsNullOrEmpty(env)) yield return env;
        yield return AppContext.BaseDirectory;
        var asmDir = Path.GetDirectoryName(typeof(NativeLibraryResolver).Assembly.Location);
        if (!string.IsNullOrEmpty(asmDir)) yield return asmDir;
    }
}
