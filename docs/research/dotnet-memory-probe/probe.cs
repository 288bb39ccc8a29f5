using System;
using System.Collections.Generic;
using System.Reflection.Emit;
using System.Threading;

namespace ProbeNs {
  public class Outer {
    public class Inner<T> {
      public static T Id(T x) { return x; }
    }
  }
  public static class Work {
    public static long Fib(int n) { return n < 2 ? n : Fib(n - 1) + Fib(n - 2); }
    public static long Loop(int n) {
      long s = 0;
      for (int i = 0; i < n; i++) { s += i * 7 % 13; if ((i & 0xffff) == 0) s ^= Outer.Inner<long>.Id(s); }
      return s;
    }
    public static string Gen<T>(T v) { return v.ToString(); }
  }
  public static class Program {
    public static void Main(string[] args) {
      Console.WriteLine("PID " + System.Diagnostics.Process.GetCurrentProcess().Id);
      var dm = new DynamicMethod("MyDynamicAdd", typeof(int), new Type[] { typeof(int), typeof(int) });
      var il = dm.GetILGenerator();
      il.Emit(OpCodes.Ldarg_0); il.Emit(OpCodes.Ldarg_1); il.Emit(OpCodes.Add); il.Emit(OpCodes.Ret);
      var f = (Func<int,int,int>)dm.CreateDelegate(typeof(Func<int,int,int>));
      long acc = 0;
      var list = new List<int>();
      for (int round = 0; ; round++) {
        acc += Work.Fib(22);
        acc += Work.Loop(2000000);
        acc += f(round, 3);
        acc += Work.Gen<int>(round).Length + Work.Gen<string>("x").Length;
        list.Add(round); if (list.Count > 1000) list.Clear();
        if (round % 50 == 0) Console.WriteLine("round " + round + " " + acc);
        Thread.Sleep(1);
      }
    }
  }
}
