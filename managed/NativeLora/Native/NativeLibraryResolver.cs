using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace NativeLora.Native;

/// <summary>
/// Finds the native core. Two builds exist: the CPU core (OpenBLAS) is `libnativelora.so`, and the
/// CUDA core shipped as a package of its own is `libnativelora_cuda.so`, so both can sit in
/// runtimes/linux-x64/native/ of one app. The CUDA core is preferred when it is there, a CUDA driver
/// loads and the CPU was not asked for (<see cref="PreferCpu"/>); a `./build.sh` tree has one
/// `libnativelora.so` of whichever backend CMake picked. Looked for, in order: NATIVELORA_NATIVE_DIR,
/// the app's folder, this assembly's folder, then the runtime's own probing (a package's native assets
/// listed in the app's deps.json). The resolver is asked once per imported function, so the handle is cached.
/// </summary>
internal static class NativeLibraryResolver
{
    private static nint s_handle;
    private static readonly object s_lock = new();

    /// <summary>Set before the first native call when the CPU device was asked for: skips the CUDA core.</summary>
    internal static bool PreferCpu { get; set; }

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
            foreach (var library in CandidateNames(PreferCpu, CudaDriverPresent()))
            {
                foreach (var dir in CandidateDirectories())
                {
                    var path = Path.Combine(dir, FileName(library));
                    tried.Add(path);
                    if (File.Exists(path) && NativeLibrary.TryLoad(path, out s_handle)) return s_handle;
                }
                // a package's runtimes/<rid>/native/ asset, found the way [LibraryImport] would without this resolver
                tried.Add($"{library} (runtime probing)");
                if (NativeLibrary.TryLoad(library, assembly, searchPath, out s_handle)) return s_handle;
            }
            throw new DllNotFoundException(
                $"NativeLora's native core ({FileName(NativeMethods.Library)}) was not found. Looked in: {string.Join(", ", tried)}. " +
                "Build it with ./build.sh, or set NATIVELORA_NATIVE_DIR to the folder that holds it.");
        }
    }

    /// <summary>The core's library names in the order they are tried: the CUDA core first unless the CPU was asked for or no driver is present.</summary>
    internal static IReadOnlyList<string> CandidateNames(bool preferCpu, bool cudaDriver) =>
        preferCpu || !cudaDriver ? [NativeMethods.Library] : [NativeMethods.Library + "_cuda", NativeMethods.Library];

    internal static string FileName(string library) =>
        OperatingSystem.IsWindows() ? $"{library}.dll" : OperatingSystem.IsMacOS() ? $"lib{library}.dylib" : $"lib{library}.so";

    private static bool CudaDriverPresent()
    {
        var driver = OperatingSystem.IsWindows() ? "nvcuda.dll" : "libcuda.so.1";
        if (!NativeLibrary.TryLoad(driver, out var h)) return false;
        NativeLibrary.Free(h);
        return true;
    }

    private static IEnumerable<string> CandidateDirectories()
    {
        var env = Environment.GetEnvironmentVariable("NATIVELORA_NATIVE_DIR");
        if (!string.IsNullOrEmpty(env)) yield return env;
        yield return AppContext.BaseDirectory;
        var asmDir = Path.GetDirectoryName(typeof(NativeLibraryResolver).Assembly.Location);
        if (!string.IsNullOrEmpty(asmDir)) yield return asmDir;
    }
}
